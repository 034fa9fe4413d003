"""STViT on Swin: STViT-R (docs/models.md section 4, released) and STViT-Swin (section 5).

Both keep Swin stages 1, 2 and 4 and rebuild stage 3 (the 14x14 grid) around
semantic tokens. STViT-R repeats a six-block "dumbbell" unit:

  0 Swin block (window 7, shift 0) on the image tokens X
  1 STGM layer 1, per 7x7 window: max-pooled 3x3 centres query their window
    plus a 3-token margin (10x10 keys, stride 4); no residual from the centres
  2 STGM layer 2, global: S = SBlock(S, [S, X])
  3 SBlock on S inside each window's 3x3 tokens
  4 SBlock on all semantic tokens
  5 recovery: X = SBlock(X, S), image tokens query the semantic tokens

STViT-Swin drops the recovery: after blocks 0-2 only the semantic grid goes on,
through alternating local / global SBlocks, PatchMerging and stage 4.
Parameter paths follow the official checkpoint (`layers.2.blocks.N...`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stvit_jax.models import execution, layers, swin

KEY_WINDOW, KEY_STRIDE = 10, 4  # official F.unfold(kernel_size=10, stride=4)
UNIT = 6


@layers.static_table
def key_window_index(grid, window):
  """Flat token indices (nW, 100) of the 10x10 / stride-4 key window of each 7x7 window.

  Window (i, j) of the 14x14 grid gets rows and columns 4i .. 4i+9 and
  4j .. 4j+9: the window itself plus 3 tokens into its neighbours.
  """
  n = grid[0]
  if tuple(grid) != (14, 14) or window != 7:
    raise ValueError(
        f'STViT-R key windows (10x10, stride 4) are defined for the 14x14 stage-3 grid of '
        f'224x224 inputs with window_size=7; got a {grid[0]}x{grid[1]} grid '
        f'(img_size={grid[0] * 16}) and window_size={window}. Use img_size=224, or '
        "create(..., backbone=True) (formerly dense=True) for the detection backbone that "
        "takes any input size.")
  starts = range(0, n - KEY_WINDOW + 1, KEY_STRIDE)
  idx = [[(r0 + r) * n + c0 + c for r in range(KEY_WINDOW) for c in range(KEY_WINDOW)]
         for r0 in starts for c0 in starts]
  return np.asarray(idx, np.int32)


def windows_to_grid(tokens, num_windows_side, t):
  """(B*nW, t*t, C) per-window tokens -> (B, (n*t)^2, C) raster grid
  ordered (window row, token row, window col, token col)."""
  c, n = tokens.shape[-1], num_windows_side
  x = tokens.reshape(-1, n, n, t, t, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(x.shape[0], -1, c)


class ConvBN(nnx.Module):
  """Conv3x3 stride 2 (no bias) -> BatchNorm, the official `Conv2d_BN` (c, bn)."""

  def __init__(self, cin, cout, *, dtype, rngs):
    self.c = nnx.Conv(cin, cout, (3, 3), strides=2, padding=1, use_bias=False,
                      dtype=dtype, rngs=rngs)
    # PyTorch momentum 0.1 is flax momentum 0.9 (weight of the old running value).
    self.bn = layers.BatchNorm(cout, momentum=0.9, epsilon=1e-5, dtype=jnp.float32, rngs=rngs)

  def __call__(self, x, *, train):
    return self.bn(self.c(x), use_running_average=not train)


class ConvStem(nnx.Module):
  """STViT-R stem: (ConvBN -> Hardswish) x 2, overall stride 4, no LN."""

  def __init__(self, embed_dim, *, dtype, rngs):
    self.proj = nnx.List([ConvBN(3, embed_dim // 2, dtype=dtype, rngs=rngs),
                          ConvBN(embed_dim // 2, embed_dim, dtype=dtype, rngs=rngs)])

  def __call__(self, images, *, train):
    x = images
    for conv_bn in self.proj:
      x = jax.nn.hard_swish(conv_bn(x, train=train))
    return x.reshape(x.shape[0], -1, x.shape[-1]).astype(jnp.float32)


class WindowSemanticInit(nnx.Module):
  """STGM layer 1 (official `SemanticAttentionBlock`), one per 7x7 window.

  centres P = adaptive max pool of the window to t x t (raw, un-normalised);
  S = gamma1 * Attn(LN1(P), LN1([P, R])) with R the window's 10x10 key patch
  (+ P only when `residual`); S = S + DropPath(gamma2 * MLP(LN2(S))).

  Without the residual (the official block), S is only the attention output, and at
  initialisation attention is uniform (random q.k near 0): every centre of a window
  gets the same mean of the window's values, so the t x t tokens of a window start
  identical and the semantic path carries one vector per window. Pretrained weights
  have learnt to break that; from scratch it can stall training (the video
  quickstart, docs/video.md). `residual=True` keeps the pooled centres distinct.
  """

  def __init__(self, dim, num_heads, grid, *, window, tokens_per_window, mlp_ratio,
               drop_path, layer_scale_init, residual=False, dtype, rngs):
    self.grid, self.window, self.t, self.residual = grid, window, tokens_per_window, residual
    key_window_index(grid, window)  # fails early for grids other than 14x14
    self.layer_scale_1 = layers.layer_scale(dim, layer_scale_init)
    self.layer_scale_2 = layers.layer_scale(dim, layer_scale_init)
    self.norm1 = layers.layer_norm(dim, eps=1e-5, rngs=rngs)
    self.attn = layers.CrossAttention(dim, num_heads, dtype=dtype, rngs=rngs)
    self.norm2 = layers.layer_norm(dim, eps=1e-5, rngs=rngs)
    self.mlp = layers.Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)
    self.remat_policy = 'none'  # models.execution.configure

  @property
  def key_index(self):
    """(nW, 100) flat indices of each window's 10x10 key patch in the H*W grid."""
    return key_window_index(self.grid, self.window)

  @execution.rematerialised
  def __call__(self, x, *, train):
    """x (B, H*W, C) -> semantic grid (B, (nw*t)^2, C), weights (B, nW, h, t*t, t*t+100)."""
    (h, w), c, b = self.grid, x.shape[-1], x.shape[0]
    windows = layers.window_partition(x.reshape(b, h, w, c), self.window)
    centres = layers.adaptive_pool(windows.reshape(-1, self.window, self.window, c), self.t, 'max')
    centres = centres.reshape(-1, self.t * self.t, c)
    keys = x[:, self.key_index].reshape(-1, self.key_index.shape[1], c)
    a, weights = self.attn(self.norm1(centres), self.norm1(jnp.concatenate([centres, keys], 1)))
    a = layers.scaled(self.layer_scale_1, a)
    s = centres + self.drop_path(a, train=train) if self.residual else a
    s = windows_to_grid(s, h // self.window, self.t)
    s = s + self.drop_path(layers.scaled(self.layer_scale_2, self.mlp(self.norm2(s), train=train)),
                           train=train)
    return s, None if weights is None else weights.reshape(b, -1, *weights.shape[1:])


class SemanticStage(nnx.Module):
  """Stage 3 of STViT-R (`recovery=True`) or STViT-Swin (`recovery=False`).

  Without recovery, the first `stgm_after` blocks are Swin blocks (1 in the
  image model). `stgm_residual` adds the pooled centres back to STGM layer 1's
  attention output (not in the official code; see WindowSemanticInit). The video model (stvit_video_swin.py) reuses this stage with
  time folded into the batch, through the `make_swin_block`, `swin_step` and
  `semantic_step` hooks.
  """

  def __init__(self, dim, depth, num_heads, grid, *, window, drop_paths, downsample,
               mlp_ratio=4.0, tokens_per_window=9, recovery=True, layer_scale_init=1e-5,
               use_global_init=False, stgm_after=1, stgm_residual=False, dtype, rngs):
    layers.check_choice('tokens_per_window', tokens_per_window, (9, 16))
    t = {9: 3, 16: 4}[tokens_per_window]
    if recovery and depth % UNIT:
      raise ValueError(f'STViT-R stage 3 is built of {UNIT}-block units; depths[2]={depth} '
                       f'is not a multiple of {UNIT}')
    if not recovery and depth < 3:
      raise ValueError(f'STViT-Swin stage 3 needs depths[2] >= 3; got {depth}')
    if recovery and stgm_after != 1:
      raise ValueError(f'stgm_after={stgm_after}: with recovery the {UNIT}-block STViT-R '
                       'unit fixes it at 1')
    if not recovery and not 1 <= stgm_after <= depth - 2:
      raise ValueError(f'stgm_after={stgm_after} is beyond the stage depth: stage 3 has '
                       f'{depth} blocks and the STGM takes 2 after them, so stgm_after '
                       f'must be in 1..{depth - 2}')
    self.stgm_after = stgm_after
    self.grid, self.recovery, self.t = grid, recovery, t
    side = grid[0] // window * t  # semantic grid side: 6 or 8
    self.semantic_grid = (side, side)
    self.out_grid = self.semantic_grid if not recovery else grid
    if downsample:
      self.out_grid = (self.out_grid[0] // 2, self.out_grid[1] // 2)
    self.global_init = (nnx.Param(layers.dense_init(rngs.params(), (1, side * side, dim)))
                        if use_global_init else None)
    sblock = dict(mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init, eps=1e-5,
                  dtype=dtype, rngs=rngs)
    blocks = []
    for i in range(depth):
      role = self.role(i)
      if role == 'swin':
        blocks.append(self.make_swin_block(i, dim, num_heads, grid, window=window,
                                           mlp_ratio=mlp_ratio, drop_path=drop_paths[i],
                                           dtype=dtype, rngs=rngs))
      elif role == 'stgm1':
        blocks.append(WindowSemanticInit(
            dim, num_heads, grid, window=window, tokens_per_window=t,
            mlp_ratio=mlp_ratio, drop_path=drop_paths[i], layer_scale_init=layer_scale_init,
            residual=stgm_residual, dtype=dtype, rngs=rngs))
      else:
        local = t if role == 'local' else None
        blocks.append(layers.SBlock(dim, num_heads, drop_path=drop_paths[i],
                                    local_window=local, **sblock))
    self.blocks = nnx.List(blocks)
    merge_grid = self.semantic_grid if not recovery else grid
    self.downsample = (swin.PatchMerging(dim, merge_grid, dtype=dtype, rngs=rngs)
                       if downsample else None)

  def make_swin_block(self, i, dim, num_heads, grid, *, window, mlp_ratio, drop_path,
                      dtype, rngs):
    del i
    return swin.SwinBlock(dim, num_heads, grid, window=window, shift=0, mlp_ratio=mlp_ratio,
                          drop_path=drop_path, dtype=dtype, rngs=rngs)

  def role(self, i):
    """What block i does: swin, stgm1, stgm2, local, global or recovery."""
    if self.recovery:
      return ('swin', 'stgm1', 'stgm2', 'local', 'global', 'recovery')[i % UNIT]
    k = self.stgm_after
    if i <= k + 1:
      return 'swin' if i < k else ('stgm1', 'stgm2')[i - k]
    return 'local' if (i - k) % 2 == 0 else 'global'

  def swin_step(self, block, x, *, train, frames):
    del frames  # images: one frame per batch entry
    return block(x, train=train)

  def semantic_step(self, role, block, s, *, train, frames):
    del role, frames
    return block(s, train=train)[0]

  def __call__(self, x, *, train, aux, frames=1):
    """x (B*frames, H*W, C): video models fold `frames` time steps into the batch."""
    aux.setdefault('semantic_tokens', [])
    aux.setdefault('stgm_attn', [])
    s = None
    for i, block in enumerate(self.blocks):
      role = self.role(i)
      if role == 'swin':
        x = self.swin_step(block, x, train=train, frames=frames)
      elif role == 'stgm1':
        s, weights = block(x, train=train)
        aux['stgm_attn'].append(weights)
      elif role == 'stgm2':
        q = s + self.global_init[...] if (self.global_init is not None and i < UNIT) else s
        s, weights = block(q, jnp.concatenate([s, x], 1), train=train)
        aux['stgm_attn'].append(weights)
        aux['semantic_tokens'].append(s)
      elif role == 'recovery':
        x, _ = block(x, s, train=train)
      else:
        s = self.semantic_step(role, block, s, train=train, frames=frames)
    if not self.recovery:  # only the semantic grid continues
      x = s
    features = x.reshape(x.shape[0], *(self.grid if self.recovery else self.semantic_grid), -1)
    return (x if self.downsample is None else self.downsample(x)), features


class STViTSwin(swin.SwinTransformer):
  """STViT-R (`recovery=True`, conv stem) and STViT-Swin (`recovery=False`)."""

  def __init__(self, *, recovery=True, conv_stem=None, tokens_per_window=9,
               layer_scale_init=1e-5, use_global_init=False, **kwargs):
    self.conv_stem = recovery if conv_stem is None else conv_stem
    super().__init__(recovery=recovery, tokens_per_window=tokens_per_window,
                     layer_scale_init=layer_scale_init, use_global_init=use_global_init,
                     **kwargs)

  def make_patch_embed(self, embed_dim, *, dtype, rngs):
    if self.conv_stem:
      return ConvStem(embed_dim, dtype=dtype, rngs=rngs)
    return super().make_patch_embed(embed_dim, dtype=dtype, rngs=rngs)

  def make_stage(self, index, dim, depth, num_heads, grid, *, recovery, tokens_per_window,
                 layer_scale_init, use_global_init, **kwargs):
    if index != 2:
      return swin.SwinStage(dim, depth, num_heads, grid, **kwargs)
    return SemanticStage(dim, depth, num_heads, grid, recovery=recovery,
                         tokens_per_window=tokens_per_window,
                         layer_scale_init=layer_scale_init,
                         use_global_init=use_global_init, **kwargs)
