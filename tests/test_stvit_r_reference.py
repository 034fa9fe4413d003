"""STViT-R stage 3 against an independent numpy (float64) reference.

The reference below is written from docs/models.md section 4 and the official
PyTorch code (changsn/STViT-R: `models/layers.py` `Block` and
`SemanticAttentionBlock`, `models/swin_transformer.py` `Deit`), reading only
parameter values out of the JAX module. One dumbbell unit:

  0 Swin block, window 7, shift 0, on the image tokens X (14x14)
  1 STGM-1 per 7x7 window: P = adaptive max pool to 3x3 (bins 0-2, 2-4, 4-6),
    keys/values [P, R] with R the 10x10 patch at rows/cols 4i..4i+9, 4j..4j+9,
    S = g1 * Attn(LN1(P), LN1([P, R])) (no residual from P),
    tokens laid out on a 6x6 grid (window row, token row, window col, token col),
    S = S + g2 * MLP(LN2(S))
  2 S = SBlock(S, [S, X])     3 SBlock inside the 3x3 windows of the 6x6 grid
  4 SBlock(S)                 5 X = SBlock(X, S)
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from numpy_reference import apply, dense, gelu, heads_of, ln, params, randomize, softmax
from stvit_jax import models
from stvit_jax.models import layers, stvit_swin, swin

DIM, HEADS, GRID, WINDOW = 48, 3, 14, 7
ROLES = ('swin', 'stgm1', 'stgm2', 'local', 'global', 'recovery')

# --------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def cheap_init(monkeypatch):
  """Every Param is overwritten by `randomize`; skip the truncated-normal init,
  which costs seconds to compile op by op on a CPU."""
  monkeypatch.setattr(layers, 'dense_init', nnx.initializers.zeros)


# --------------------------------------------------------------------------
# the numpy reference


def mlp(x, p, blk):
  return dense(gelu(dense(x, p, blk + 'mlp.fc1')), p, blk + 'mlp.fc2')


def cross_attention(xq, xkv, p, blk, heads=HEADS):
  """Official `Attention(x, y)`: q = Linear(x), [k | v] = Linear(y) (first C
  channels k, next C v), softmax(q k^T * d^-0.5) v, output Linear."""
  c = xq.shape[-1]
  q = dense(xq, p, blk + 'attn.q')
  kv = dense(xkv, p, blk + 'attn.kv')
  q, k, v = heads_of(q, heads), heads_of(kv[..., :c], heads), heads_of(kv[..., c:], heads)
  w = softmax(q @ k.transpose(0, 1, 3, 2) * (c // heads) ** -0.5)
  out = (w @ v).transpose(0, 2, 1, 3).reshape(xq.shape)
  return dense(out, p, blk + 'attn.proj'), w


def sblock(x, y, p, blk):
  """Official `Block(x, y)`: the same LN1 on both inputs, residual on x."""
  y = x if y is None else y
  a, _ = cross_attention(ln(x, p, blk + 'norm1'), ln(y, p, blk + 'norm1'), p, blk)
  x = x + p[blk + 'layer_scale_1'] * a
  return x + p[blk + 'layer_scale_2'] * mlp(ln(x, p, blk + 'norm2'), p, blk)


def local_sblock(s, p, blk, side=6, w=3):
  """Official `Block(local=True)`: self-attention inside w x w windows of the grid."""
  b, n, c = s.shape
  g = ln(s, p, blk + 'norm1').reshape(b, side, side, c)
  a = np.zeros_like(g)
  for i in range(side // w):
    for j in range(side // w):
      win = g[:, i * w:(i + 1) * w, j * w:(j + 1) * w].reshape(b, w * w, c)
      out, _ = cross_attention(win, win, p, blk)
      a[:, i * w:(i + 1) * w, j * w:(j + 1) * w] = out.reshape(b, w, w, c)
  s = s + p[blk + 'layer_scale_1'] * a.reshape(b, n, c)
  return s + p[blk + 'layer_scale_2'] * mlp(ln(s, p, blk + 'norm2'), p, blk)


def swin_block_shift0(x, p, blk, heads=HEADS, side=GRID, w=WINDOW):
  """Swin block, plain 7x7 windows, relative position bias, no LayerScale."""
  b, n, c = x.shape
  y = ln(x, p, blk + 'norm1').reshape(b, side, side, c)
  table = p[blk + 'attn.relative_position_bias_table']
  coords = [(r, s) for r in range(w) for s in range(w)]
  bias = np.array([[table[(ri - rj + w - 1) * (2 * w - 1) + (ci - cj + w - 1)]
                    for (rj, cj) in coords] for (ri, ci) in coords])  # (49, 49, heads)
  a = np.zeros_like(y)
  for i in range(side // w):
    for j in range(side // w):
      win = y[:, i * w:(i + 1) * w, j * w:(j + 1) * w].reshape(b, w * w, c)
      qkv = dense(win, p, blk + 'attn.qkv')
      q, k, v = (heads_of(qkv[..., t * c:(t + 1) * c], heads) for t in range(3))
      att = softmax(q @ k.transpose(0, 1, 3, 2) * (c // heads) ** -0.5 + bias.transpose(2, 0, 1))
      out = dense((att @ v).transpose(0, 2, 1, 3).reshape(b, w * w, c), p, blk + 'attn.proj')
      a[:, i * w:(i + 1) * w, j * w:(j + 1) * w] = out.reshape(b, w, w, c)
  x = x + a.reshape(b, n, c)
  return x + mlp(ln(x, p, blk + 'norm2'), p, blk)


POOL_BINS = ((0, 2), (2, 4), (4, 6))  # docs/models.md section 4: adaptive pooling 7 -> 3, inclusive


def stgm1(x, p, blk, window_major=False):
  """STGM layer 1; returns the (B, 36, C) semantic tokens and the attention
  weights (B, nW, heads, 9, 109). `window_major=True` lays the tokens out in
  the wrong order (window by window) to prove the test can see the layout."""
  b, n, c = x.shape
  g = x.reshape(b, GRID, GRID, c)
  grid = np.zeros((b, 6, 6, c))
  per_window, weights = [], []
  for i in range(2):
    for j in range(2):
      win = g[:, 7 * i:7 * i + 7, 7 * j:7 * j + 7]
      centres = np.stack([win[:, r0:r1 + 1, c0:c1 + 1].max(axis=(1, 2))
                          for r0, r1 in POOL_BINS for c0, c1 in POOL_BINS], 1)  # (B, 9, C)
      keys = g[:, 4 * i:4 * i + 10, 4 * j:4 * j + 10].reshape(b, 100, c)
      kv = np.concatenate([centres, keys], 1)
      a, w = cross_attention(ln(centres, p, blk + 'norm1'), ln(kv, p, blk + 'norm1'), p, blk)
      s = p[blk + 'layer_scale_1'] * a  # no residual from the centres
      grid[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3] = s.reshape(b, 3, 3, c)
      per_window.append(s)
      weights.append(w)
  s = np.concatenate(per_window, 1) if window_major else grid.reshape(b, 36, c)
  s = s + p[blk + 'layer_scale_2'] * mlp(ln(s, p, blk + 'norm2'), p, blk)
  return s, np.stack(weights, 1)


def dumbbell_unit(x, p, u=0):
  """Blocks 6u .. 6u+5 of the stage; returns the new X and the intermediates."""
  blk = [f'blocks.{6 * u + k}.' for k in range(6)]
  x = swin_block_shift0(x, p, blk[0])
  s, _ = stgm1(x, p, blk[1])
  s = sblock(s, np.concatenate([s, x], 1), p, blk[2])
  after_stgm2 = s
  s = local_sblock(s, p, blk[3])
  s = sblock(s, None, p, blk[4])
  x = sblock(x, s, p, blk[5])
  return x, {'semantic_tokens': after_stgm2, 'final_semantic': s}


# --------------------------------------------------------------------------
# tests


@pytest.fixture(scope='module')
def stage():
  """One randomised single-unit stage shared by the tests (built once: cheap init)."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(layers, 'dense_init', nnx.initializers.zeros)
    stage = stvit_swin.SemanticStage(
        DIM, 6, HEADS, (GRID, GRID), window=WINDOW, drop_paths=[0.0] * 6,
        downsample=False, recovery=True, layer_scale_init=0.5, dtype=jnp.float32,
        rngs=nnx.Rngs(0))
  randomize(stage, seed=6)
  return stage


@pytest.fixture(scope='module')
def inputs():
  return np.random.default_rng(11).normal(size=(2, GRID * GRID, DIM))


def close(got, want, tol=1e-4):
  got = np.asarray(got, np.float64)
  assert got.shape == want.shape
  err = np.abs(got - want).max() / max(np.abs(want).max(), 1.0)
  assert err < tol, f'max error {err:.2e} relative to the output scale'


def test_stage_matches_the_numpy_reference(stage, inputs):
  assert [stage.role(i) for i in range(6)] == list(ROLES)
  p = params(stage)
  (out, features), aux = apply(stage, jnp.asarray(inputs, jnp.float32), train=False, aux={})
  want, mid = dumbbell_unit(inputs, p)
  assert len(aux['semantic_tokens']) == 1 and len(aux['stgm_attn']) == 2
  close(aux['semantic_tokens'][0], mid['semantic_tokens'])
  close(out, want)
  close(features, want.reshape(2, GRID, GRID, DIM))
  # the branches are not negligible: the unit moves X well beyond the tolerance
  assert np.abs(want - inputs).max() > 0.1


def test_stgm1_lays_out_tokens_row_interleaved(stage, inputs):
  p = params(stage)
  x = swin_block_shift0(inputs, p, 'blocks.0.')
  s, weights = apply(stage.blocks[1], jnp.asarray(x, jnp.float32), train=False)
  want, want_weights = stgm1(x, p, 'blocks.1.')
  close(s, want)
  close(weights, want_weights)  # (B, nW, heads, 9, 9 + 100)
  window_major, _ = stgm1(x, p, 'blocks.1.', window_major=True)
  assert np.abs(window_major - want).max() > 0.1


def test_key_window_index_is_the_10x10_stride_4_patch():
  idx = np.asarray(stvit_swin.key_window_index((14, 14), 7))
  assert idx.shape == (4, 100)
  for i in range(2):
    for j in range(2):
      rows, cols = np.divmod(idx[2 * i + j], 14)
      np.testing.assert_array_equal(rows, np.repeat(np.arange(4 * i, 4 * i + 10), 10))
      np.testing.assert_array_equal(cols, np.tile(np.arange(4 * j, 4 * j + 10), 10))
  assert idx[0, 0] == 0 and idx[0, -1] == 9 * 14 + 9
  assert idx[3, 0] == 4 * 14 + 4 and idx[3, -1] == 195
  with pytest.raises(ValueError, match='14x14'):
    stvit_swin.key_window_index((28, 28), 7)


def test_stvit_r_swin_small_stage3_layout():
  model = nnx.eval_shape(lambda: models.create('stvit_r_swin_small'))
  stage = model.layers[2]
  assert isinstance(stage, stvit_swin.SemanticStage)
  blocks = list(stage.blocks)
  assert len(blocks) == 18
  assert [stage.role(i) for i in range(18)] == list(ROLES) * 3
  kinds = {'swin': swin.SwinBlock, 'stgm1': stvit_swin.WindowSemanticInit}
  for i, block in enumerate(blocks):
    role = ROLES[i % 6]
    assert isinstance(block, kinds.get(role, layers.SBlock)), (i, role, type(block))
    if role == 'swin':
      assert block.grid == (14, 14) and block.window == 7
      assert block.shift == 0, f'block {i} is shifted'
    elif role == 'stgm1':
      assert block.t == 3 and block.window == 7 and not block.residual
    else:
      assert block.local_window == (3 if role == 'local' else None), (i, role)
      assert block.layer_scale_1 is not None and block.layer_scale_2 is not None
    for norm in (block.norm1, block.norm2):
      assert norm.epsilon == 1e-5  # official stage 3 uses nn.LayerNorm defaults
  assert stage.global_init is None  # USE_GLOBAL was False in the released runs
  assert stage.semantic_grid == (6, 6) and stage.out_grid == (7, 7)
  # stages 1, 2 stay plain Swin: shift 0 / 3 alternating; stage 4 (7x7) unshifted
  assert [b.shift for b in model.layers[0].blocks] == [0, 3]
  assert [b.shift for b in model.layers[1].blocks] == [0, 3]
  assert [b.shift for b in model.layers[3].blocks] == [0, 0]
