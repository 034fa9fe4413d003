"""Resizing a ViT's learned position embedding to another token grid, as timm does.

A checkpoint trained at 224 px used at 384 px needs its (g x g) grid of position
embeddings resampled to (n x n): timm's `resample_abs_pos_embed` does it with
PyTorch's antialiased bicubic interpolation; these are the same weights, built
as an (n, g) matrix applied to both axes. Prefix tokens (class, distillation)
are kept as they are.
"""
from __future__ import annotations

import numpy as np


def _cubic(x, a=-0.5):
  x = np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def _resize_matrix(n_in, n_out):
  """(n_out, n_in) weights of PyTorch's antialiased bicubic interpolation
  (`F.interpolate(mode='bicubic', antialias=True)`, align_corners=False)."""
  scale = n_in / n_out
  support, inv = 2.0 * max(scale, 1.0), 1.0 / max(scale, 1.0)
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    centre = scale * (i + 0.5)
    lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
    w = _cubic((np.arange(lo, hi) - centre + 0.5) * inv)
    m[i, lo:hi] = w / w.sum()
  return m


def resize(pos, num_tokens, num_prefix):
  """(1, P + g*g, C) -> (1, P + n*n, C): the grid part resized as timm's
  `resample_abs_pos_embed` does (bicubic, antialias), prefix tokens kept."""
  prefix, grid = pos[:, :num_prefix], pos[0, num_prefix:]
  g, n = int(round(grid.shape[0] ** 0.5)), int(round((num_tokens - num_prefix) ** 0.5))
  if g * g != grid.shape[0] or n * n != num_tokens - num_prefix:
    raise ValueError(f'pos_embed: {pos.shape[1]} -> {num_tokens} tokens with '
                     f'{num_prefix} prefix tokens is not a square grid resize')
  m = _resize_matrix(g, n)
  grid = np.einsum('ih,hwc,jw->ijc', m, grid.reshape(g, g, -1).astype(np.float64), m)
  return np.concatenate([prefix, grid.reshape(1, n * n, -1).astype(pos.dtype)], 1)
