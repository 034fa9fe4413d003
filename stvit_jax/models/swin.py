"""Swin Transformer baseline (docs/models.md section 2), Microsoft's layout.

Parameter paths follow the official state_dict (`layers.N.blocks.M.attn.qkv`,
`layers.N.downsample` at the end of stage N), which STViT-R reuses. Shift
masks and relative-position indices are numpy constants built at construction.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from stvit_jax.models import execution, layers

# name -> (embed_dim, depths, num_heads)
VARIANTS = {
    'tiny': (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    'small': (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    'base': (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}


@layers.static_table
def relative_position_index(w):
  """(w*w, w*w) index into the (2w-1)^2 bias table, as in the official code."""
  coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing='ij')).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
  return rel[..., 0] * (2 * w - 1) + rel[..., 1]


@layers.static_table
def shift_mask(h, w, window, shift):
  """(nW, w*w, w*w) additive mask: -100 between tokens from different regions
  of the cyclically shifted grid, 0 elsewhere (the official SW-MSA mask)."""
  region = np.zeros((1, h, w, 1), np.float32)
  cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  for i, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
    region[:, hs, ws, :] = i
  ids = layers.window_partition(region, window)[..., 0]  # (nW, w*w)
  return np.where(ids[:, None, :] != ids[:, :, None], -100.0, 0.0).astype(np.float32)


def stage_window(grid, window, field='window_size'):
  """Window for a grid: shrinks to the grid when the grid is no larger."""
  h, w = grid
  if min(h, w) <= window:
    return min(h, w)
  if h % window or w % window:
    raise ValueError(f'{field}={window} must divide the {h}x{w} token grid of this stage; '
                     f'use an img_size whose stage grids are multiples of {window}')
  return window


class WindowAttention(layers.Attention):
  """Multi-head self-attention in windows with a relative position bias."""

  def __init__(self, dim, num_heads, window, *, dtype, rngs):
    super().__init__(dim, num_heads, dtype=dtype, rngs=rngs)
    self.window = window
    self.relative_position_bias_table = nnx.Param(
        layers.dense_init(rngs.params(), ((2 * window - 1) ** 2, num_heads)))

  def __call__(self, windows, mask=None):
    """windows (B*nW, w*w, C); mask (nW, w*w, w*w) or None."""
    n = self.window ** 2
    bias = self.relative_position_bias_table[...][relative_position_index(self.window).reshape(-1)]
    bias = bias.reshape(n, n, -1).transpose(2, 0, 1)[None]  # (1, h, N, N)
    if mask is not None:
      nw = mask.shape[0]
      bias = (bias + mask[:, None]).reshape(1, nw, self.num_heads, n, n)
      bias = jnp.broadcast_to(bias, (windows.shape[0] // nw,) + bias.shape[1:])
      bias = bias.reshape(-1, self.num_heads, n, n)
    return super().__call__(windows, bias)


class SwinBlock(nnx.Module):
  """(Shifted-)window attention block on a (B, H*W, C) token sequence."""

  def __init__(self, dim, num_heads, grid, *, window=7, shift=0, mlp_ratio=4.0,
               drop_path=0.0, dtype, rngs):
    self.grid = grid
    self.window = stage_window(grid, window)
    self.shift = 0 if min(grid) <= window else shift
    self.norm1 = layers.layer_norm(dim, eps=1e-5, rngs=rngs)
    self.attn = WindowAttention(dim, num_heads, self.window, dtype=dtype, rngs=rngs)
    self.norm2 = layers.layer_norm(dim, eps=1e-5, rngs=rngs)
    self.mlp = layers.Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)
    self.remat_policy = 'none'  # models.execution.configure

  @execution.rematerialised
  def __call__(self, x, *, train):
    (h, w), c = self.grid, x.shape[-1]
    y = self.norm1(x).reshape(-1, h, w, c)
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
    mask = shift_mask(h, w, self.window, self.shift) if self.shift else None
    a, _ = self.attn(layers.window_partition(y, self.window), mask)
    a = layers.window_reverse(a, self.window, h, w)
    if self.shift:
      a = jnp.roll(a, (self.shift, self.shift), axis=(1, 2))
    x = x + self.drop_path(a.reshape(x.shape), train=train)
    return x + self.drop_path(self.mlp(self.norm2(x), train=train), train=train)


class PatchMerging(nnx.Module):
  """2x2 neighbourhood concat (x0, x1, x2, x3 order) -> LN(4C) -> Linear(4C, 2C)."""

  def __init__(self, dim, grid, *, dtype, rngs):
    if grid[0] % 2 or grid[1] % 2:
      raise ValueError(f'PatchMerging needs an even token grid; got {grid[0]}x{grid[1]}')
    self.grid = grid
    self.norm = layers.layer_norm(4 * dim, eps=1e-5, rngs=rngs)
    self.reduction = layers.linear(4 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    (h, w), c = self.grid, x.shape[-1]
    x = x.reshape(-1, h, w, c)
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return self.reduction(self.norm(x.reshape(x.shape[0], -1, 4 * c)))


class SwinStage(nnx.Module):
  """`depth` blocks alternating shift 0 / window//2, then optional PatchMerging."""

  def __init__(self, dim, depth, num_heads, grid, *, window, drop_paths, downsample,
               mlp_ratio=4.0, dtype, rngs):
    self.grid, self.out_grid = grid, (grid[0] // 2, grid[1] // 2) if downsample else grid
    self.blocks = nnx.List([
        SwinBlock(dim, num_heads, grid, window=window, shift=0 if i % 2 == 0 else window // 2,
                  mlp_ratio=mlp_ratio, drop_path=drop_paths[i], dtype=dtype, rngs=rngs)
        for i in range(depth)])
    self.downsample = (PatchMerging(dim, grid, dtype=dtype, rngs=rngs) if downsample else None)
    self.scan_layers = False  # models.execution.configure

  def __call__(self, x, *, train, aux=None):
    """Returns (output tokens, the stage's feature map before merging)."""
    del aux  # plain stages add nothing to the model's aux
    x = execution.run_blocks(self.blocks, x, train=train, scan=self.scan_layers, period=2)
    features = x.reshape(x.shape[0], *self.grid, -1)
    return (x if self.downsample is None else self.downsample(x)), features


class SwinPatchEmbed(nnx.Module):
  """4x4 patchify conv + LN."""

  def __init__(self, embed_dim, patch_size=4, *, dtype, rngs):
    self.proj = nnx.Conv(3, embed_dim, (patch_size, patch_size), strides=patch_size,
                         padding='VALID', dtype=dtype, rngs=rngs)
    self.norm = layers.layer_norm(embed_dim, eps=1e-5, rngs=rngs)

  def __call__(self, images, *, train):
    x = self.proj(images).astype(jnp.float32)
    return self.norm(x.reshape(x.shape[0], -1, x.shape[-1]))


class SwinTransformer(nnx.Module):
  """Swin: patch embed -> 4 stages -> LN -> global average pool -> head.

  Subclasses (STViT-R / STViT-Swin) replace the stem or a stage through
  `make_patch_embed` and `make_stage`.
  """
  patch_size = 4

  def __init__(self, *, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
               window_size=7, img_size=224, num_classes=1000, mlp_ratio=4.0,
               drop_rate=0.0, drop_path_rate=0.0, dtype=jnp.float32, rngs, **stage_options):
    if img_size % (self.patch_size * 8):
      raise ValueError(f'img_size={img_size} must be a multiple of {self.patch_size * 8} '
                       '(patch size 4, then three 2x merges)')
    self.img_size = img_size
    self.patch_embed = self.make_patch_embed(embed_dim, dtype=dtype, rngs=rngs)
    self.pos_drop = nnx.Dropout(drop_rate, rngs=rngs)
    dpr = layers.drop_path_rates(drop_path_rate, sum(depths))
    grid = img_size // self.patch_size
    stages = []
    for i, depth in enumerate(depths):
      start = sum(depths[:i])
      stage = self.make_stage(
          i, int(embed_dim * 2 ** i), depth, num_heads[i], (grid, grid), window=window_size,
          drop_paths=dpr[start:start + depth], downsample=i < len(depths) - 1,
          mlp_ratio=mlp_ratio, dtype=dtype, rngs=rngs, **stage_options)
      stages.append(stage)
      grid = stage.out_grid[0]
    self.layers = nnx.List(stages)
    self.num_features = int(embed_dim * 2 ** (len(depths) - 1))
    self.norm = layers.layer_norm(self.num_features, eps=1e-5, rngs=rngs)
    self.head = layers.linear(self.num_features, num_classes, dtype=jnp.float32, rngs=rngs)

  def make_patch_embed(self, embed_dim, *, dtype, rngs):
    return SwinPatchEmbed(embed_dim, self.patch_size, dtype=dtype, rngs=rngs)

  def make_stage(self, index, dim, depth, num_heads, grid, **kwargs):
    del index
    return SwinStage(dim, depth, num_heads, grid, **kwargs)

  def __call__(self, images, *, train=False):
    if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
      raise ValueError(f'{type(self).__name__} expects channels-last images (B, H, W, 3); got '
                       f'{images.shape}, which looks channels-first (B, 3, H, W): transpose '
                       'it with images.transpose(0, 2, 3, 1).')
    if images.ndim != 4 or images.shape[1:] != (self.img_size, self.img_size, 3):
      raise ValueError(f'{type(self).__name__} expects images (B, {self.img_size}, '
                       f'{self.img_size}, 3); got {images.shape}. Build it with img_size=... '
                       'for another resolution.')
    x = self.pos_drop(self.patch_embed(images, train=train), deterministic=not train)
    aux = {'stage_features': []}
    for stage in self.layers:
      x, features = stage(x, train=train, aux=aux)
      aux['stage_features'].append(features)
    x = self.norm(x)
    return self.head(jnp.mean(x, axis=1)), aux
