"""STViT-R dense mode (detection backbone): parameters, shapes, masks, padding, gradients.

One tiny model (width 24) is built once and given random O(1) weights (LayerScale
near 1, not 1e-5) so that every attention term and every mask shows in the
outputs. Numerical references are brute-force numpy loops over windows.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from stvit_jax import models
from stvit_jax.models import registry
from stvit_jax.models import stvit_r_dense as dense

KW = dict(embed_dim=24, depths=(2, 2, 6, 2), num_heads=(1, 2, 3, 6), num_classes=7)
WINDOW, T = 7, 3
# The graphs are tiny, so XLA's optimisation passes would dominate the time of this file.
FAST = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def compiled(fn, *args):
  return jax.jit(fn).lower(*args).compile(FAST)


def randomize(model, seed=0):
  """O(1) random weights: LN scales ~1, LayerScale in [0.5, 1.5], kernels ~ fan_in^-1/2."""
  rng = np.random.default_rng(seed)

  def sample(path, x):
    name = jax.tree_util.keystr(path)
    if 'layer_scale' in name:
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    if "['scale']" in name:
      return (1 + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)
    std = math.prod(x.shape[:-1]) ** -0.5 if "['kernel']" in name else 0.2
    if 'relative_position_bias_table' in name:
      std = 1.0
    return (std * rng.standard_normal(x.shape)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(sample, nnx.state(model, nnx.Param))
  nnx.update(model, jax.tree.map(jnp.asarray, params))


@pytest.fixture(scope='module')
def model():
  build = lambda: dense.STViTRDense(**KW, rngs=nnx.Rngs(0))
  # One compiled init instead of one eager compile per initializer shape.
  m = nnx.merge(nnx.graphdef(nnx.eval_shape(build)), compiled(lambda: nnx.state(build()))())
  randomize(m)
  return m


# ------------------------------------------------------------------ parameters and shapes


@pytest.mark.slow  # full-size models
@pytest.mark.parametrize('name', ['stvit_r_swin_tiny', 'stvit_r_swin_small'])
def test_parameters_match_classification_model(name):
  _, variant = registry.MODELS[name]
  ours = nnx.eval_shape(lambda: dense.STViTRDense(**variant, rngs=nnx.Rngs(0)))
  theirs = nnx.eval_shape(lambda: models.create(name))

  def table(m, kind):
    return {'.'.join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(m, kind))}

  assert table(ours, nnx.Param) == table(theirs, nnx.Param)
  assert table(ours, nnx.BatchStat) == table(theirs, nnx.BatchStat)
  assert len(table(ours, nnx.Param)) > 100


def expected_grids(h, w):
  grids = [(h // 4, w // 4)]
  for _ in range(3):
    grids.append((-(-grids[-1][0] // 2), -(-grids[-1][1] // 2)))
  return grids


@pytest.mark.parametrize('size', [(224, 224), (256, 320), (200, 232), (88, 120)])
def test_multiscale_output_shapes(model, size):
  graphdef, state = nnx.split(model)
  images = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
  logits, aux = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, images)
  assert logits.shape == (2, 7)
  grids = expected_grids(*size)
  assert [f.shape for f in aux['stage_features']] == [
      (2, *g, 24 * 2 ** i) for i, g in enumerate(grids)]
  h3, w3 = grids[2]
  semantic = (2, -(-h3 // WINDOW) * T, -(-w3 // WINDOW) * T, 96)
  assert [s.shape for s in aux['semantic_tokens']] == [semantic]


def test_forward_is_finite_off_the_32_grid(model):
  graphdef, state = nnx.split(model)
  images = jnp.asarray(np.random.default_rng(1).standard_normal((1, 200, 232, 3)), jnp.float32)
  logits, aux = compiled(lambda s, x: nnx.merge(graphdef, s)(x), state, images)(state, images)
  assert logits.shape == (1, 7) and np.isfinite(np.asarray(logits)).all()
  for f, g in zip(aux['stage_features'], expected_grids(200, 232)):
    assert f.shape[1:3] == g and np.isfinite(np.asarray(f)).all()


def test_rejects_bad_inputs_and_options(model):
  with pytest.raises(ValueError, match='multiples of 4'):
    model(jnp.zeros((1, 222, 224, 3)))
  with pytest.raises(ValueError, match='recovery'):
    dense.STViTRDense(**KW, recovery=False, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------ brute-force references


def ln(x, norm):
  x = np.asarray(x, np.float64)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...])


def lin(x, layer):
  return x @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...])


def attend(attn, q_in, kv_in, key_ok):
  """Multi-head cross attention of q_in (n, C) on kv_in (m, C); -1000 on keys not ok."""
  c, heads = q_in.shape[-1], attn.num_heads
  d = c // heads
  q, kv = lin(q_in, attn.q), lin(kv_in, attn.kv)
  out = []
  for h in range(heads):
    cols = slice(h * d, (h + 1) * d)
    logits = q[:, cols] @ kv[:, :c][:, cols].T * d ** -0.5 + np.where(key_ok, 0.0, -1000.0)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    out.append((p / p.sum(-1, keepdims=True)) @ kv[:, c:][:, cols])
  return lin(np.concatenate(out, -1), attn.proj)


def mlp_half(block, x):
  hid = lin(ln(x, block.norm2), block.mlp.fc1)
  hid = 0.5 * hid * (1 + erf(hid / np.sqrt(2)))
  return x + np.asarray(block.layer_scale_2[...]) * lin(hid, block.mlp.fc2)


def pool_bins(n, k):  # PyTorch adaptive pooling, written out again
  return [(math.floor(a * n / k), math.ceil((a + 1) * n / k)) for a in range(k)]


def ref_semantic_attention(block, x, s, k):
  """Official SemanticAttentionBlock, one window at a time. x (H, W, C) real tokens."""
  h, w, c = x.shape
  nh, nw = -(-h // WINDOW), -(-w // WINDOW)
  lo = (k - WINDOW) // 2
  out = np.zeros((nh * T, nw * T, c))
  for i in range(nh):
    for j in range(nw):
      if s is None:  # STGM-1: max-pooled centres of the zero-padded window
        win = np.zeros((WINDOW, WINDOW, c))
        real = x[i * WINDOW:(i + 1) * WINDOW, j * WINDOW:(j + 1) * WINDOW]
        win[:real.shape[0], :real.shape[1]] = real
        q = np.stack([win[r0:r1, c0:c1].max((0, 1))
                      for r0, r1 in pool_bins(WINDOW, T) for c0, c1 in pool_bins(WINDOW, T)])
      else:
        q = s[i * T:(i + 1) * T, j * T:(j + 1) * T].reshape(-1, c)
      keys, ok = [], []
      for r in range(i * WINDOW - lo, i * WINDOW - lo + k):
        for cc in range(j * WINDOW - lo, j * WINDOW - lo + k):
          inside = 0 <= r < h and 0 <= cc < w
          keys.append(x[r, cc] if inside else np.zeros(c))
          ok.append(inside)
      a = attend(block.attn, ln(q, block.norm1), ln(np.stack(keys), block.norm1), np.array(ok))
      out[i * T:(i + 1) * T, j * T:(j + 1) * T] = (q + np.asarray(block.layer_scale_1[...]) * a
                                                    ).reshape(T, T, c)
  return mlp_half(block, out)


def ref_restore(block, x, s, k=27):
  """Official RestoreBlock: each 7x7 image window queries the k x k semantic tokens
  centred on its 3x3 ones; semantic tokens pooled wholly from padding are masked."""
  h, w, c = x.shape
  sh, sw = s.shape[:2]
  lo = (k - T) // 2
  first = lambda a: a // T * WINDOW + pool_bins(WINDOW, T)[a % T][0]  # first image row pooled
  out = np.array(x, np.float64)
  for i in range(-(-h // WINDOW)):
    for j in range(-(-w // WINDOW)):
      keys, ok = [], []
      for r in range(i * T - lo, i * T - lo + k):
        for cc in range(j * T - lo, j * T - lo + k):
          inside = 0 <= r < sh and 0 <= cc < sw
          keys.append(s[r, cc] if inside else np.zeros(c))
          ok.append(inside and first(r) < h and first(cc) < w)
      rows = slice(i * WINDOW, min((i + 1) * WINDOW, h))
      cols = slice(j * WINDOW, min((j + 1) * WINDOW, w))
      q = x[rows, cols]
      a = attend(block.attn, ln(q.reshape(-1, c), block.norm1), ln(np.stack(keys), block.norm1),
                 np.array(ok))
      out[rows, cols] = q + np.asarray(block.layer_scale_1[...]) * a.reshape(q.shape)
  return mlp_half(block, out)


@pytest.mark.parametrize('grid', [(14, 21), (12, 17)])  # a multiple of the window, and not
def test_stage3_blocks_match_bruteforce(model, grid):
  stage, (h, w) = model.layers[2], grid
  padded = (-(-h // WINDOW) * WINDOW, -(-w // WINDOW) * WINDOW)
  sgrid = (padded[0] // WINDOW * T, padded[1] // WINDOW * T)
  rng = np.random.default_rng(2)
  x = rng.standard_normal((h, w, 96)).astype(np.float32)
  s = rng.standard_normal((*sgrid, 96)).astype(np.float32)
  valid = dense.real_map(grid, padded)
  s_valid = dense.semantic_valid_map(grid, padded, WINDOW, T)

  def blocks(x, s):
    xp = dense.pad_grid(x[None], padded)
    stgm1, weights = dense.semantic_attention(stage.blocks[1], xp, valid, None, window=WINDOW,
                                              t=T, k=14, train=False)
    stgm2, _ = dense.semantic_attention(stage.blocks[2], xp, valid, s[None], window=WINDOW,
                                        t=T, k=21, train=False)
    rec = dense.restore(stage.blocks[5], xp, valid, s[None], s_valid, window=WINDOW, t=T, k=27,
                        train=False)
    return stgm1[0], weights, stgm2[0], rec[0, :h, :w]

  stgm1, weights, stgm2, rec = compiled(blocks, x, s)(x, s)
  tol = dict(rtol=2e-4, atol=2e-4)
  assert weights.shape == (1, padded[0] * padded[1] // 49, 3, 9, 196)
  np.testing.assert_allclose(stgm1, ref_semantic_attention(stage.blocks[1], x, None, 14), **tol)
  np.testing.assert_allclose(stgm2, ref_semantic_attention(stage.blocks[2], x, s, 21), **tol)
  np.testing.assert_allclose(rec, ref_restore(stage.blocks[5], x, s), **tol)


def test_swin_stage_matches_classification_blocks_without_padding(model):
  """On a 28x28 grid (no padding) the dense Swin stage is the classification stage."""
  stage = model.layers[1]
  x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 28, 28, 48)), jnp.float32)

  def both(x):
    merged, features = stage(x.reshape(1, -1, 48), train=False)  # classification path
    got = dense.swin_blocks(stage, x, (28, 28), train=False)
    return merged, features, dense.patch_merge(stage.downsample, got).reshape(merged.shape), got

  merged, features, got_merged, got = compiled(both, x)(x)
  np.testing.assert_allclose(got, features, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_merged, merged, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ padding and gradients


def test_padding_content_does_not_leak(model):
  """Sample 0 zero-padded, sample 1 garbage beyond the real area: same real outputs."""
  rng = np.random.default_rng(4)

  def pair(real, padded, c):
    x = rng.standard_normal((2, *padded, c)).astype(np.float32) * 100  # garbage everywhere
    x[:, :real[0], :real[1]] = rng.standard_normal((*real, c))  # the same image in both
    x[0, real[0]:], x[0, :, real[1]:] = 0, 0
    return jnp.asarray(x)

  hw3, hw4 = (12, 17), (5, 9)  # stage 3 pads to 14x21, stage 4 (shifted windows) to 7x14
  x3, x4 = pair(hw3, (14, 21), 96), pair(hw4, (7, 14), 192)

  def run(x3, x4):
    aux = {}
    y3 = dense.semantic_blocks(model.layers[2], x3, hw3, train=False, aux=aux)
    return y3, dense.swin_blocks(model.layers[3], x4, hw4, train=False), aux['semantic_tokens'][0]

  y3, y4, s = compiled(run, x3, x4)(x3, x4)
  np.testing.assert_allclose(y3[1, :12, :17], y3[0, :12, :17], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y4[1, :5, :9], y4[0, :5, :9], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(s[1], s[0], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(y3[0, :12, :17]) - np.asarray(x3[0, :12, :17])).max() > 0.1


def test_every_parameter_gets_a_finite_gradient(model):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  images = jnp.asarray(np.random.default_rng(5).standard_normal((2, 88, 120, 3)), jnp.float32)
  probe = np.random.default_rng(6)

  def loss_fn(params, rest, images):
    logits, aux = nnx.merge(graphdef, params, rest, copy=True)(images, train=False)
    outputs = [logits, *aux['stage_features'], *aux['semantic_tokens']]
    loss = sum(jnp.sum(o * probe.standard_normal(o.shape).astype(np.float32)) for o in outputs)
    return loss, outputs

  grad_fn = jax.grad(loss_fn, has_aux=True)
  grads, outputs = compiled(grad_fn, params, rest, images)(params, rest, images)
  assert all(np.isfinite(np.asarray(o)).all() for o in outputs)
  flat = [('.'.join(map(str, p)), np.asarray(g.get_value())) for p, g in nnx.to_flat_state(grads)]
  assert len(flat) == len(nnx.to_flat_state(params))
  bad = [name for name, g in flat if not np.isfinite(g).all() or not np.any(g != 0)]
  assert not bad, f'parameters with a zero or non-finite gradient: {bad}'
