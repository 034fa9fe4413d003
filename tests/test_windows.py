"""Window machinery of the Swin family against independent references.

Every reference here is written from docs/models.md (sections 1, 2) and
the official Swin / STViT-R code, in numpy float64, without calling the code
under test: window partition order, the shifted-window attention of a whole
`SwinBlock` as masked full attention over the un-rolled grid, the relative
position index, the SW-MSA mask, PatchMerging's concat order and PyTorch's
adaptive pooling bins. All parameters are randomised so that a wrong index,
order or head split changes the numbers.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from numpy_reference import apply, dense, gelu, ln, params, randomize, softmax
from stvit_jax.models import layers, swin

# --------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def cheap_init(monkeypatch):
  """Every Param is overwritten by `randomize`, so skip the truncated-normal
  init: compiling it op by op for each shape costs seconds on a CPU."""
  monkeypatch.setattr(layers, 'dense_init', nnx.initializers.zeros)


# --------------------------------------------------------------------------
# window_partition / window_reverse


def test_window_partition_explicit_values():
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  got = np.asarray(layers.window_partition(jnp.asarray(x), 2))[..., 0]
  # raster over windows, then raster inside each window
  np.testing.assert_array_equal(got, [[0, 1, 4, 5], [2, 3, 6, 7],
                                      [8, 9, 12, 13], [10, 11, 14, 15]])


@pytest.mark.parametrize('shape,w', [((2, 14, 14, 3), 7), ((3, 6, 9, 2), 3),
                                     ((1, 28, 14, 5), 7), ((2, 6, 6, 4), 2)])
def test_window_partition_order_and_round_trip(shape, w):
  b, h, wd, c = shape
  x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
  windows = np.asarray(layers.window_partition(jnp.asarray(x), w))
  nh, nw = h // w, wd // w
  assert windows.shape == (b * nh * nw, w * w, c)
  expected = np.empty_like(windows)
  for bi in range(b):
    for wi in range(nh):
      for wj in range(nw):
        for ti in range(w):
          for tj in range(w):
            expected[(bi * nh + wi) * nw + wj, ti * w + tj] = x[bi, wi * w + ti, wj * w + tj]
  np.testing.assert_array_equal(windows, expected)
  # round trip, from both accepted window layouts
  back = layers.window_reverse(jnp.asarray(windows), w, h, wd)
  np.testing.assert_array_equal(np.asarray(back), x)
  back = layers.window_reverse(jnp.asarray(windows.reshape(-1, w, w, c)), w, h, wd)
  np.testing.assert_array_equal(np.asarray(back), x)


# --------------------------------------------------------------------------
# relative position index and shift mask


def test_relative_position_index_matches_official_formula():
  w = 7
  coords = [(r, c) for r in range(w) for c in range(w)]
  expected = np.array([[(ri - rj + w - 1) * (2 * w - 1) + (ci - cj + w - 1)
                        for (rj, cj) in coords] for (ri, ci) in coords])
  got = np.asarray(swin.relative_position_index(w))
  assert got.shape == (49, 49)
  np.testing.assert_array_equal(got, expected)
  # a few values by hand: same token -> centre of the 13x13 table
  assert got[0, 0] == 84 and got[0, 48] == 0 and got[48, 0] == 168
  assert got[0, 1] == 83 and got[1, 0] == 85 and got[0, 7] == 71
  assert got.min() == 0 and got.max() == 168


def official_mask(h, w, window, shift):
  """The official SW-MSA mask, re-derived with explicit loops."""
  img = np.zeros((h, w))
  cuts_h = ((0, h - window), (h - window, h - shift), (h - shift, h))
  cuts_w = ((0, w - window), (w - window, w - shift), (w - shift, w))
  cnt = 0
  for r0, r1 in cuts_h:
    for c0, c1 in cuts_w:
      img[r0:r1, c0:c1] = cnt
      cnt += 1
  ids = []
  for wi in range(h // window):
    for wj in range(w // window):
      ids.append([img[wi * window + ti, wj * window + tj]
                  for ti in range(window) for tj in range(window)])
  ids = np.array(ids)
  diff = ids[:, None, :] - ids[:, :, None]
  return np.where(diff != 0, -100.0, 0.0)


@pytest.mark.parametrize('h,w', [(14, 14), (28, 28), (14, 21)])
def test_shift_mask_matches_official_construction(h, w):
  got = np.asarray(swin.shift_mask(h, w, 7, 3))
  expected = official_mask(h, w, 7, 3)
  assert got.shape == expected.shape == ((h // 7) * (w // 7), 49, 49)
  np.testing.assert_array_equal(got, expected)
  # only windows on the bottom row / right column are split by the wrap-around
  nwc = w // 7
  for k in range(got.shape[0]):
    split = (k // nwc == h // 7 - 1) or (k % nwc == nwc - 1)
    assert bool((got[k] != 0).any()) == split


# --------------------------------------------------------------------------
# SwinBlock == masked full attention over the un-rolled grid


def swin_block_reference(x, p, grid, window, shift, heads, mask_value, swap_bias=False):
  """Full attention over all H*W tokens; a pair may attend iff both tokens lie
  in the same window of the cyclically shifted grid and are contiguous in the
  image (not joined by the wrap-around). In the un-rolled image the shifted
  windows start at row/col `shift`, so the segment of row r is
  floor((r - shift) / window) (rows above `shift` form segment -1)."""
  h, w = grid
  b, n, c = x.shape
  d = c // heads
  y = ln(x, p, 'norm1')
  qkv = dense(y, p, 'attn.qkv')
  q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(b, n, heads, d) for i in range(3))
  rows, cols = np.divmod(np.arange(n), w)
  seg_r, seg_c = (rows - shift) // window, (cols - shift) // window
  allowed = (seg_r[:, None] == seg_r[None]) & (seg_c[:, None] == seg_c[None])
  dy = rows[:, None] - rows[None, :]  # query minus key, in image = shifted frame
  dx = cols[:, None] - cols[None, :]
  inside = allowed & (np.abs(dy) < window) & (np.abs(dx) < window)
  assert (inside == allowed).all()
  idx = (np.clip(dy, 1 - window, window - 1) + window - 1) * (2 * window - 1) + (
      np.clip(dx, 1 - window, window - 1) + window - 1)
  if swap_bias:  # deliberately wrong (key minus query): proves the test sees the bias
    idx = idx.T
  bias = p['attn.relative_position_bias_table'][idx]  # (n, n, heads)
  bias = np.where(allowed[..., None], bias, 0.0).transpose(2, 0, 1)
  q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # (b, heads, n, d)
  logits = q @ k.transpose(0, 1, 3, 2) * d ** -0.5 + bias
  logits = logits + np.where(allowed, 0.0, mask_value)
  out = (softmax(logits) @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
  x = x + dense(out, p, 'attn.proj')
  return x + dense(gelu(dense(ln(x, p, 'norm2'), p, 'mlp.fc1')), p, 'mlp.fc2')


@pytest.mark.parametrize('grid,shift', [((14, 14), 0), ((14, 14), 3), ((28, 28), 3),
                                        ((14, 21), 3)])
def test_swin_block_equals_masked_full_attention(grid, shift):
  dim, heads = 32, 2
  block = swin.SwinBlock(dim, heads, grid, window=7, shift=shift, dtype=jnp.float32,
                         rngs=nnx.Rngs(0))
  assert block.window == 7 and block.shift == shift
  randomize(block, seed=sum(grid) + shift)
  p = params(block)
  batch = 2 if grid[0] * grid[1] <= 300 else 1  # the reference is O((HW)^2)
  x = np.random.default_rng(1).normal(size=(batch, grid[0] * grid[1], dim))
  got = np.asarray(apply(block, jnp.asarray(x, jnp.float32), train=False))
  want = swin_block_reference(x, p, grid, 7, shift, heads, -np.inf)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # the official -100 (added to the logits) gives the same softmax as -inf
  official = swin_block_reference(x, p, grid, 7, shift, heads, -100.0)
  np.testing.assert_allclose(official, want, rtol=1e-9, atol=1e-9)
  swapped = swin_block_reference(x, p, grid, 7, shift, heads, -np.inf, swap_bias=True)
  assert np.abs(swapped - want).max() > 1e-2
  if shift:  # the test can tell shifted from plain windows
    plain = swin_block_reference(x, p, grid, 7, 0, heads, -np.inf)
    assert np.abs(plain - want).max() > 1e-2


def test_swin_block_on_a_grid_no_larger_than_the_window_drops_the_shift():
  block = swin.SwinBlock(32, 2, (7, 7), window=7, shift=3, dtype=jnp.float32,
                         rngs=nnx.Rngs(0))
  assert block.window == 7 and block.shift == 0
  randomize(block, seed=7)
  x = np.random.default_rng(2).normal(size=(2, 49, 32))
  got = np.asarray(apply(block, jnp.asarray(x, jnp.float32), train=False))
  want = swin_block_reference(x, params(block), (7, 7), 7, 0, 2, -np.inf)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# PatchMerging


def patch_merging_reference(x, p, grid, order=((0, 0), (1, 0), (0, 1), (1, 1))):
  b, _, c = x.shape
  g = x.reshape(b, *grid, c)
  parts = [g[:, r::2, s::2] for r, s in order]  # (row offset, col offset)
  cat = np.concatenate(parts, -1).reshape(b, -1, 4 * c)
  return ln(cat, p, 'norm') @ p['reduction.kernel']


def test_patch_merging_concat_order():
  grid, dim = (4, 6), 8
  merge = swin.PatchMerging(dim, grid, dtype=jnp.float32, rngs=nnx.Rngs(0))
  randomize(merge, seed=3)
  p = params(merge)
  assert 'reduction.bias' not in p  # Linear(4C, 2C, bias=False)
  x = np.random.default_rng(4).normal(size=(2, grid[0] * grid[1], dim))
  got = np.asarray(apply(merge, jnp.asarray(x, jnp.float32)))
  assert got.shape == (2, 6, 2 * dim)
  want = patch_merging_reference(x, p, grid)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]; not the col-first order
  wrong = patch_merging_reference(x, p, grid, order=((0, 0), (0, 1), (1, 0), (1, 1)))
  assert np.abs(wrong - want).max() > 1e-2


# --------------------------------------------------------------------------
# adaptive pooling with PyTorch bins


def torch_bins(n, k):
  """Inclusive (start, end) of PyTorch's adaptive pooling bin i."""
  return [(math.floor(i * n / k), math.ceil((i + 1) * n / k) - 1) for i in range(k)]


def test_torch_bins_are_the_spec_bins():
  assert torch_bins(7, 3) == [(0, 2), (2, 4), (4, 6)]
  assert torch_bins(14, 4) == [(0, 3), (3, 6), (7, 10), (10, 13)]
  assert torch_bins(7, 4) == [(0, 1), (1, 3), (3, 5), (5, 6)]
  for n, k in ((7, 3), (14, 4), (7, 4), (14, 3), (16, 4)):
    assert layers.adaptive_pool_bins(n, k) == [(a, e + 1) for a, e in torch_bins(n, k)]


@pytest.mark.parametrize('kind', ['avg', 'max'])
@pytest.mark.parametrize('h,w,k', [(7, 7, 3), (14, 14, 4), (7, 7, 4), (7, 14, 3)])
def test_adaptive_pool_matches_torch_bins(kind, h, w, k):
  x = np.random.default_rng(h * 100 + w + k).normal(size=(2, h, w, 5))
  reduce = {'avg': np.mean, 'max': np.max}[kind]
  want = np.empty((2, k, k, 5))
  for i, (r0, r1) in enumerate(torch_bins(h, k)):
    for j, (c0, c1) in enumerate(torch_bins(w, k)):
      want[:, i, j] = reduce(x[:, r0:r1 + 1, c0:c1 + 1], axis=(1, 2))
  got = np.asarray(layers.adaptive_pool(jnp.asarray(x, jnp.float32), k, kind))
  assert got.shape == (2, k, k, 5)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_adaptive_pool_rejects_an_unknown_kind():
  with pytest.raises(ValueError, match='avg'):
    layers.adaptive_pool(jnp.zeros((1, 7, 7, 2)), 3, 'mean')
