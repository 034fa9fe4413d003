"""Video Swin: exact sizes and costs, masks and blocks against an independent
float64 numpy reference (padding, shifts, clamped windows), gradients, dtypes,
input errors. Full sizes are built abstractly; behaviour runs at tiny widths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from numpy_reference import apply, dense, gelu, ln, params, randomize, softmax
from stvit_jax.tools import flops
from stvit_jax import models
from stvit_jax.models import video_swin

# params with 400 classes (torchvision swin3d_t / swin3d_b agree), GMACs per
# 32x224x224 view from the Video Swin paper.
REFERENCE = {
    'video_swin_tiny': (28_158_070, 87.9),
    'video_swin_small': (49_816_678, 165.9),
    'video_swin_base': (88_048_984, 281.6),
}
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
            window_size=(4, 3, 3), num_classes=5)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(REFERENCE))
def test_params_and_gmacs_match_the_paper(name):
  want_params, want_gmacs = REFERENCE[name]
  model = nnx.eval_shape(lambda: models.create(name))
  assert flops.count_params(model) == want_params
  assert flops.model_macs(model, 224, num_frames=32) / 1e9 == pytest.approx(want_gmacs, rel=0.01)


# --------------------------------------------------------------------------
# numpy reference: attention over every padded token, restricted to pairs in
# the same (shifted) window; no window_partition, no roll.


def region_labels(p, w, s):
  """Per-axis region of each position of the shifted padded axis."""
  r = np.arange(p)
  if s == 0:
    return np.zeros(p, int)
  return (r >= p - w).astype(int) + (r >= p - s).astype(int)


def full_window_bias_index(n1, n2, full):
  """Index of the official (full-window) table for flat in-window indices n1, n2."""
  c1 = np.stack(np.unravel_index(n1, full), -1)
  c2 = np.stack(np.unravel_index(n2, full), -1)
  rel = c1 - c2 + np.array(full) - 1
  return (rel[..., 0] * (2 * full[1] - 1) + rel[..., 1]) * (2 * full[2] - 1) + rel[..., 2]


def block_reference(x, p, full, shift_cfg, heads):
  b, d, h, w, c = x.shape
  size = (d, h, w)
  window = tuple(min(s, f) for s, f in zip(size, full))
  shift = tuple(0 if s <= f else sh for s, f, sh in zip(size, full, shift_cfg))
  pad = tuple(-(-s // wi) * wi for s, wi in zip(size, window))
  y = np.zeros((b, *pad, c))
  y[:, :d, :h, :w] = ln(x, p, 'norm1')
  r = np.stack(np.meshgrid(*[np.arange(n) for n in pad], indexing='ij'), -1).reshape(-1, 3)
  src = (r + np.array(shift)) % np.array(pad)  # rolled position r holds token src
  tokens = y[:, src[:, 0], src[:, 1], src[:, 2]]  # (b, n, c)
  win = r // np.array(window)
  same = (win[:, None] == win[None]).all(-1)
  labels = np.stack([region_labels(pa, wi, s)[r[:, i]]
                     for i, (pa, wi, s) in enumerate(zip(pad, window, shift))], -1)
  mask = np.where((labels[:, None] != labels[None]).any(-1), -100.0, 0.0) if any(shift) else 0.0
  flat = np.ravel_multi_index(tuple((r % np.array(window)).T), window)
  bias = p['attn.relative_position_bias_table'][
      full_window_bias_index(flat[:, None], flat[None], full)].transpose(2, 0, 1)
  qkv = dense(tokens, p, 'attn.qkv').reshape(b, -1, 3, heads, c // heads)
  q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
  logits = q @ k.transpose(0, 1, 3, 2) * (c // heads) ** -0.5 + bias + mask
  logits = np.where(same, logits, -np.inf)
  out = (softmax(logits) @ v).transpose(0, 2, 1, 3).reshape(b, -1, c)
  out = dense(out, p, 'attn.proj')
  back = np.zeros((b, *pad, c))
  back[:, src[:, 0], src[:, 1], src[:, 2]] = out
  x = x + back[:, :d, :h, :w]
  return x + dense(gelu(dense(ln(x, p, 'norm2'), p, 'mlp.fc1')), p, 'mlp.fc2')


@pytest.mark.parametrize('size,shift', [
    ((8, 6, 6), (0, 0, 0)),      # whole windows
    ((8, 6, 6), (2, 1, 1)),      # shifted, 27 regions
    ((6, 7, 8), (2, 1, 1)),      # padded on every axis, shifted
    ((3, 7, 5), (2, 1, 1)),      # time clamped to 3 (no temporal shift), sliced index
    ((8, 3, 2), (2, 1, 1)),      # space clamped, temporal shift only (Video Swin stage 4)
])
def test_block_matches_the_numpy_reference(size, shift):
  dim, heads, full = 16, 2, (4, 3, 3)
  block = video_swin.SwinBlock3D(dim, heads, window=full, shift=shift, dtype=jnp.float32,
                                 rngs=nnx.Rngs(0))
  randomize(block, seed=sum(size))
  p = params(block)
  x = np.random.default_rng(1).normal(size=(2, *size, dim))
  got = np.asarray(apply(block, jnp.asarray(x, jnp.float32), train=False))
  want = block_reference(x, p, full, shift, heads)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  if any(shift) and size[0] > 4:  # the reference can tell shifted from plain windows
    assert np.abs(block_reference(x, p, full, (0, 0, 0), heads) - want).max() > 1e-2


def windows_by_hand(grid, window):
  """(nW, N, ...) the entries of each window, windows and their tokens in (d, h, w) raster
  order, with plain loops."""
  (d, h, w), (wd, wh, ww) = grid.shape[:3], window
  return np.array([[grid[d0 + i, h0 + j, w0 + k]
                    for i in range(wd) for j in range(wh) for k in range(ww)]
                   for d0 in range(0, d, wd) for h0 in range(0, h, wh)
                   for w0 in range(0, w, ww)])


@pytest.mark.parametrize('size,window,shift', [
    ((16, 56, 56), (8, 7, 7), (4, 3, 3)),
    ((8, 14, 14), (8, 7, 7), (0, 3, 3)),
    ((16, 7, 7), (8, 7, 7), (4, 0, 0)),
])
def test_shift_mask_matches_region_labels(size, window, shift):
  got = video_swin.shift_mask(size, window, shift)
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing='ij'), -1)
  labels = np.stack([region_labels(n, w, s)[grid[..., i]]
                     for i, (n, w, s) in enumerate(zip(size, window, shift))], -1)
  ids = windows_by_hand(labels, window)  # (nW, N, 3), not through window_partition
  want = np.where((ids[:, :, None] != ids[:, None]).any(-1), -100.0, 0.0)
  assert got.shape == (np.prod(np.array(size) // window), np.prod(window), np.prod(window))
  np.testing.assert_array_equal(got, want)
  regions = len({tuple(v) for v in labels.reshape(-1, 3)})
  assert regions == np.prod([3 if s else 1 for s in shift])
  assert video_swin.relative_position_index(*window).max() + 1 == np.prod(
      [2 * w - 1 for w in window])


def test_relative_position_index_is_the_official_formula():
  idx = video_swin.relative_position_index(8, 7, 7)
  n = np.arange(392)
  np.testing.assert_array_equal(idx, full_window_bias_index(n[:, None], n[None], (8, 7, 7)))
  assert idx.shape == (392, 392) and idx.max() == 2534


# --------------------------------------------------------------------------
# whole model at tiny width


def tiny(**kw):
  return models.create('video_swin_tiny', **{**TINY, **kw})


@pytest.fixture(scope='module')
def model():
  """One randomised tiny model for the module: eager creation is slow on 2 cores."""
  m = tiny(drop_path_rate=0.1)
  randomize(m, seed=3)
  return m


@pytest.mark.parametrize('clip,stage_shapes', [
    ((2, 8, 48, 48, 3), [(4, 12, 12, 16), (4, 6, 6, 32), (4, 3, 3, 64), (4, 2, 2, 128)]),
    ((1, 5, 36, 44, 3), [(3, 9, 11, 16), (3, 5, 6, 32), (3, 3, 3, 64), (3, 2, 2, 128)]),
])
def test_shapes_any_clip_size(model, clip, stage_shapes):
  logits, aux = apply(model, jax.random.normal(jax.random.key(0), clip), train=False)
  assert logits.shape == (clip[0], 5)
  assert [f.shape[1:] for f in aux['stage_features']] == stage_shapes
  assert bool(jnp.isfinite(logits).all())


@pytest.mark.slow
def test_every_parameter_gets_a_gradient(model):
  clips = jax.random.normal(jax.random.key(0), (2, 8, 32, 32, 3))
  graphdef, state, rest = nnx.split(model, nnx.Param, ...)

  def loss(p, rest):
    logits, _ = nnx.merge(graphdef, p, rest, copy=True)(clips, train=True)
    return jnp.sum(logits ** 2)

  grads = jax.jit(jax.grad(loss))(state, rest)
  dead = ['.'.join(map(str, path)) for path, g in nnx.to_flat_state(grads)
          if not np.any(np.asarray(g.get_value()) != 0)]
  assert not dead, f'parameters without gradient: {dead}'


@pytest.mark.slow
def test_bfloat16_logits_close_to_float32(model):
  # Same weights, other compute dtype: the bfloat16 graph merged with the model's state.
  bf16 = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: tiny(dtype='bfloat16',
                                                            drop_path_rate=0.1))),
                   nnx.state(model))
  clips = jax.random.normal(jax.random.key(1), (2, 8, 32, 32, 3))
  a, b = apply(model, clips, train=False)[0], apply(bf16, clips, train=False)[0]
  assert b.dtype == jnp.float32
  assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())
  assert float(jnp.abs(a - b).max()) > 0  # it did compute in bfloat16


@pytest.mark.slow
def test_head_dropout_and_drop_path_only_in_training(model):
  clips = jax.random.normal(jax.random.key(2), (2, 8, 32, 32, 3))
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda s, x: nnx.merge(graphdef, s, copy=True)(x, train=True)[0])
  eval_a = apply(model, clips, train=False)[0]
  np.testing.assert_array_equal(eval_a, apply(model, clips, train=False)[0])
  train_a = run(state, clips)
  assert float(jnp.abs(train_a - eval_a).max()) > 1e-3


def test_image_batch_into_a_video_model_names_the_input_kind(model):
  with pytest.raises(ValueError, match=r'expects clips \(B, T, H, W, 3\).*image batch'):
    model(jnp.zeros((1, 32, 32, 3)))


def test_clip_into_an_image_model_is_refused():
  model = nnx.eval_shape(lambda: models.create(
      'swin_tiny', embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), img_size=64,
      window_size=4))
  with pytest.raises(ValueError, match=r'expects images \(B, 64, 64, 3\)'):
    model(jnp.zeros((1, 4, 64, 64, 3)))


def test_window_and_patch_must_be_triples():
  with pytest.raises(ValueError, match='window_size=.*triples'):
    nnx.eval_shape(lambda: tiny(window_size=(7, 7)))


@pytest.mark.parametrize('patch,clip', [((2, 4, 4), (1, 8, 36, 44, 3)),
                                        ((2, 1, 1), (1, 5, 14, 14, 3)),
                                        ((1, 2, 2), (1, 3, 9, 10, 3))])
def test_conv_stem_gives_the_tubelet_grid(patch, clip):
  """Padding 1 with the stem's strides gives the grid of the padded tubelet embedding."""
  x = jax.ShapeDtypeStruct(clip, jnp.float32)
  shapes = [jax.eval_shape(lambda c, s=stem: s(embed_dim=8, patch=patch, dtype=jnp.float32,
                                                 rngs=nnx.Rngs(0))(c, train=False), x).shape
            for stem in (video_swin.PatchEmbed3D, video_swin.ConvStem3D)]
  assert shapes[0] == shapes[1]


def test_conv_stem_batch_statistics_only_in_training():
  stem = video_swin.ConvStem3D(8, (2, 2, 2), dtype=jnp.float32, rngs=nnx.Rngs(0))
  clips = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 3)) * 3 + 1
  before = stem(clips, train=False)
  stem(clips, train=True)  # moves the running mean and variance towards the batch's
  assert float(jnp.abs(stem(clips, train=False) - before).max()) > 1e-3
  np.testing.assert_array_equal(stem(clips, train=False), stem(clips, train=False))


def test_conv_stem_needs_a_square_patch_of_one_two_or_four():
  with pytest.raises(ValueError, match=r'conv_stem=True needs a square patch_size.*\(2, 3, 3\)'):
    video_swin.ConvStem3D(8, (2, 3, 3), dtype=jnp.float32, rngs=nnx.Rngs(0))


def test_conv_stem_is_a_model_option():
  model = nnx.eval_shape(lambda: tiny(conv_stem=True))
  assert isinstance(model.patch_embed, video_swin.ConvStem3D)
  assert 'conv_stem' in models.options('stvit_video_swin_tiny')


@pytest.mark.parametrize('shape,strides', [((2, 4, 9, 10, 3), (2, 1, 1)),
                                           ((1, 5, 8, 8, 6), (1, 2, 2)),
                                           ((1, 3, 7, 6, 4), (2, 2, 2))])
def test_conv3d_by_slices_is_a_3d_convolution(shape, strides):
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, shape[-1], 5))
  want = jax.lax.conv_general_dilated(x, kernel, strides, [(1, 1)] * 3,
                                      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'))
  got = video_swin.conv3d_by_slices(x, kernel, strides)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
