"""Video Swin Transformer (docs/video.md section 1), as the original computes it.

Source of truth: SwinTransformer/Video-Swin-Transformer
`mmaction/models/backbones/swin_transformer.py` (+ `heads/i3d_head.py`), with
patch (2, 4, 4), window (8, 7, 7), patch_norm=True. Clips are channels last,
(B, T, H, W, 3); tokens stay (B, D, H, W, C) between stages.

The original takes any clip size: it pads to whole patches, to whole windows
(after norm1, so the padded tokens are zeros that still act as keys), and to
even grids before merging; on any axis no larger than the window the window
shrinks to the axis and the shift there becomes 0. With a shrunk window it
slices its (8*7*7)^2 relative-position index to [:N, :N] instead of building
the index of the smaller window; we do the same, so logits match. Window,
shift, padding and masks are functions of static shapes, computed at trace time.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stvit_jax.models import execution, layers, swin

VARIANTS = swin.VARIANTS  # the same (embed_dim, depths, heads) rows as image Swin
WINDOW = (8, 7, 7)
PATCH = (2, 4, 4)
head_init = nnx.initializers.normal(stddev=0.01)  # I3D head: normal(0.01), bias 0


@layers.static_table
def relative_position_index(wd, wh, ww):
  """(N, N) index into the ((2wd-1)(2wh-1)(2ww-1), heads) table, official formula."""
  coords = np.stack(np.meshgrid(np.arange(wd), np.arange(wh), np.arange(ww),
                                indexing='ij')).reshape(3, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
  rel = rel + np.array([wd - 1, wh - 1, ww - 1])
  return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


def window_and_shift(size, window, shift):
  """`get_window_size`: axes no larger than the window shrink it and lose the shift."""
  w = tuple(s if s <= wi else wi for s, wi in zip(size, window))
  sh = tuple(0 if s <= wi else si for s, wi, si in zip(size, window, shift))
  return w, sh


def padded(size, window):
  return tuple(-(-s // w) * w for s, w in zip(size, window))


def window_partition(x, w):
  """(B, D, H, W, C) -> (B*nW, wd*wh*ww, C), windows in (d, h, w) raster order."""
  b, d, h, wd, c = x.shape
  x = x.reshape(b, d // w[0], w[0], h // w[1], w[1], wd // w[2], w[2], c)
  return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, math.prod(w), c)


def window_reverse(windows, w, b, d, h, wd):
  x = windows.reshape(b, d // w[0], h // w[1], wd // w[2], w[0], w[1], w[2], -1)
  return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, wd, -1)


@layers.static_table
def shift_mask(size, window, shift):
  """(nW, N, N) official `compute_mask` on the padded grid `size`: -100 between
  tokens of different regions. Built with the original's slices, so an axis
  whose shift is 0 (slice(-0, None) covers it all) adds no region boundary."""
  region = np.zeros((1, *size, 1), np.float32)
  cuts = [(slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift)]
  cnt = 0
  for d in cuts[0]:
    for h in cuts[1]:
      for w in cuts[2]:
        region[:, d, h, w, :] = cnt
        cnt += 1
  ids = np.asarray(window_partition(region, window))[..., 0]
  return np.where(ids[:, None, :] != ids[:, :, None], -100.0, 0.0).astype(np.float32)


class WindowAttention3D(layers.Attention):
  """Window attention with the (2535, heads) relative position bias table."""

  def __init__(self, dim, num_heads, window, *, dtype, rngs):
    super().__init__(dim, num_heads, dtype=dtype, rngs=rngs)
    self.window = tuple(window)
    self.relative_position_bias_table = nnx.Param(layers.dense_init(
        rngs.params(), (math.prod(2 * w - 1 for w in window), num_heads)))

  def __call__(self, windows, mask=None):
    """windows (B*nW, N, C) with N <= wd*wh*ww; mask (nW, N, N) or None."""
    n = windows.shape[1]
    index = relative_position_index(*self.window)[:n, :n]  # the original's slice
    bias = self.relative_position_bias_table[...][index.reshape(-1)]
    bias = bias.reshape(n, n, -1).transpose(2, 0, 1)[None]
    if mask is not None:
      nw = mask.shape[0]
      bias = (bias + mask[:, None]).reshape(1, nw, self.num_heads, n, n)
      bias = jnp.broadcast_to(bias, (windows.shape[0] // nw,) + bias.shape[1:])
      bias = bias.reshape(-1, self.num_heads, n, n)
    return layers.Attention.__call__(self, windows, bias)


class SwinBlock3D(nnx.Module):
  """(Shifted) 3D window attention block on (B, D, H, W, C)."""

  def __init__(self, dim, num_heads, *, window=WINDOW, shift=(0, 0, 0), mlp_ratio=4.0,
               drop_path=0.0, dtype, rngs):
    self.window, self.shift = tuple(window), tuple(shift)
    self.norm1 = layers.layer_norm(dim, eps=1e-5, rngs=rngs)
    self.attn = WindowAttention3D(dim, num_heads, self.window, dtype=dtype, rngs=rngs)
    self.norm2 = layers.layer_norm(dim, eps=1e-5, rngs=rngs)
    self.mlp = layers.Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)
    self.remat_policy = 'none'  # models.execution.configure

  @execution.rematerialised
  def __call__(self, x, *, train):
    b, d, h, w, c = x.shape
    window, shift = window_and_shift((d, h, w), self.window, self.shift)
    size = padded((d, h, w), window)
    y = self.norm1(x)
    # Zeros after the norm, as F.pad in the original: they are keys too.
    y = jnp.pad(y, ((0, 0), *[(0, p - s) for p, s in zip(size, (d, h, w))], (0, 0)))
    mask = None
    if any(shift):
      y = jnp.roll(y, tuple(-s for s in shift), axis=(1, 2, 3))
      mask = shift_mask(size, window, shift)
    a, _ = self.attn(window_partition(y, window), mask)
    a = window_reverse(a, window, b, *size)
    if any(shift):
      a = jnp.roll(a, shift, axis=(1, 2, 3))
    x = x + self.drop_path(a[:, :d, :h, :w], train=train)
    return x + self.drop_path(self.mlp(self.norm2(x), train=train), train=train)


class PatchMerging3D(nnx.Module):
  """Spatial-only 2x2 merge (image-Swin order), odd grids padded; time unchanged.

  Same parameters as `swin.PatchMerging` (norm, reduction), which needs its
  grid at construction; the video model only learns its grid at call time.
  """

  def __init__(self, dim, *, dtype, rngs):
    self.norm = layers.layer_norm(4 * dim, eps=1e-5, rngs=rngs)
    self.reduction = layers.linear(4 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    h, w = x.shape[2:4]
    x = jnp.pad(x, ((0, 0), (0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2],
                         x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
    return self.reduction(self.norm(x))


class VideoSwinStage(nnx.Module):
  """`BasicLayer`: blocks alternating shift 0 / window // 2, then merging."""

  def __init__(self, dim, depth, num_heads, *, window, drop_paths, downsample,
               mlp_ratio=4.0, dtype, rngs):
    shift = tuple(w // 2 for w in window)
    self.blocks = nnx.List([
        SwinBlock3D(dim, num_heads, window=window, shift=(0, 0, 0) if i % 2 == 0 else shift,
                    mlp_ratio=mlp_ratio, drop_path=drop_paths[i], dtype=dtype, rngs=rngs)
        for i in range(depth)])
    self.downsample = PatchMerging3D(dim, dtype=dtype, rngs=rngs) if downsample else None
    self.scan_layers = False  # models.execution.configure

  def __call__(self, x, *, train, aux=None):
    """Returns (output, the stage's feature map (B, D, H, W, C) before merging)."""
    del aux
    x = execution.run_blocks(self.blocks, x, train=train, scan=self.scan_layers, period=2)
    return (x if self.downsample is None else self.downsample(x)), x


class PatchEmbed3D(nnx.Module):
  """Conv3d kernel = stride = (2, 4, 4) (input padded to whole patches) -> LN."""

  def __init__(self, embed_dim, patch=PATCH, *, dtype, rngs):
    self.patch = tuple(patch)
    self.proj = nnx.Conv(3, embed_dim, self.patch, strides=self.patch, padding='VALID',
                         dtype=dtype, rngs=rngs)
    self.norm = layers.layer_norm(embed_dim, eps=1e-5, rngs=rngs)

  def __call__(self, clips, *, train=False):
    del train  # no batch statistics here; the signature of ConvStem3D
    size = clips.shape[1:4]
    pad = [(0, p - s) for p, s in zip(padded(size, self.patch), size)]
    x = self.proj(jnp.pad(clips, ((0, 0), *pad, (0, 0)))).astype(jnp.float32)
    return self.norm(x)


class ConvStem3D(nnx.Module):
  """The STViT-R conv stem in 3D (an option, not in Video Swin): (Conv3d 3x3x3 -> BN ->
  Hardswish) x 2, overall stride = the patch size, no LN.

  Unlike a (2, 4, 4) tubelet, whose linear patch embedding only mixes the pixels of
  its own cube, every output sees a 3-frame neighbourhood through a nonlinearity: a
  motion detector (how a 3D CNN sees motion) before any attention. The first conv
  halves the patch's height and width, the second does the rest and all of time.
  """

  def __init__(self, embed_dim, patch=PATCH, *, dtype, rngs):
    pt, ph, pw = self.patch = tuple(patch)
    if ph != pw or ph not in (1, 2, 4):
      raise ValueError(f'conv_stem=True needs a square patch_size of 1, 2 or 4 pixels '
                       f'(two stride-1/2 convs); got patch_size={self.patch}')
    second = 2 if ph > 1 else 1
    strides = ((1, ph // second, ph // second), (pt, second, second))
    widths = (3, embed_dim // 2, embed_dim)
    # The nnx.Conv modules hold the kernels (PyTorch Conv3d's names) and strides; the
    # convolution itself, padding included, is conv3d_by_slices.
    self.convs = nnx.List([
        nnx.Conv(widths[i], widths[i + 1], (3, 3, 3), strides=strides[i], padding=1,
                 use_bias=False, dtype=dtype, rngs=rngs) for i in range(2)])
    # PyTorch momentum 0.1 is flax momentum 0.9, as the image stem (stvit_swin.ConvBN).
    self.bns = nnx.List([layers.BatchNorm(widths[i + 1], momentum=0.9, epsilon=1e-5,
                                          dtype=jnp.float32, rngs=rngs) for i in range(2)])

  def __call__(self, clips, *, train):
    x = clips  # padding 1 with stride s gives ceil(size / s): Video Swin's padded grid
    for conv, bn in zip(self.convs, self.bns):
      y = conv3d_by_slices(x.astype(conv.dtype), conv.kernel[...].astype(conv.dtype),
                           conv.strides)
      x = jax.nn.hard_swish(bn(y, use_running_average=not train))
    return x.astype(jnp.float32)


def conv3d_by_slices(x, kernel, strides):
  """Conv3d with padding k // 2 on every axis, as one matmul of shifted strided views.

  x (B, T, H, W, Cin), kernel (kt, kh, kw, Cin, Cout) of odd sizes. XLA:CPU runs 3D
  convolutions as generic loops. Measured here, a 3x3x3 stem on 16 clips of 4x56x56,
  forward and backward: 1.7 s as a 3D conv, 0.43 s as 2D convs of the frames, 0.33 s
  as this (the kt*kh*kw views side by side, then one (.., 27 Cin) x (27 Cin, Cout)
  matmul; tuned 2D conv kernels do poorly with 3 or 6 input channels). Every backend
  runs matmuls well; the views cost 27x the input's memory, small for a stem.
  """
  k = kernel.shape[:3]
  pad = [(n // 2, n // 2) for n in k]
  xp = jnp.pad(x, ((0, 0), *pad, (0, 0)))
  out = [(size + 2 * (n // 2) - n) // s + 1 for size, n, s in zip(x.shape[1:4], k, strides)]
  views = [xp[:, i:i + strides[0] * (out[0] - 1) + 1:strides[0],
              j:j + strides[1] * (out[1] - 1) + 1:strides[1],
              m:m + strides[2] * (out[2] - 1) + 1:strides[2]]
           for i in range(k[0]) for j in range(k[1]) for m in range(k[2])]
  return jnp.concatenate(views, -1) @ kernel.reshape(-1, kernel.shape[-1])


class VideoSwinTransformer(nnx.Module):
  """Video Swin: patch embed -> 4 stages -> LN -> I3D head (mean over T, H, W).

  Returns (logits, aux) with aux['stage_features'] the four (B, D, H, W, C)
  stage maps before merging. `img_size` / `num_frames` are only the default
  clip size (flops, benchmarks); any clip the original accepts works.
  STViT (stvit_video_swin.py) replaces stage 3 through `make_stage`.
  `conv_stem=True` replaces the tubelet embedding by `ConvStem3D` (an option for
  training from scratch; no released checkpoint has it).
  """
  input_kind = 'video'

  def __init__(self, *, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
               window_size=WINDOW, patch_size=PATCH, img_size=224, num_frames=32,
               num_classes=400, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
               head_drop_rate=0.5, conv_stem=False, dtype=jnp.float32, rngs,
               **stage_options):
    window_size, patch_size = tuple(window_size), tuple(patch_size)
    if len(window_size) != 3 or len(patch_size) != 3:
      raise ValueError(f'window_size={window_size} and patch_size={patch_size} must be '
                       '(time, height, width) triples')
    self.img_size, self.num_frames = img_size, num_frames
    self.window_size, self.patch_size = window_size, patch_size
    stem = ConvStem3D if conv_stem else PatchEmbed3D
    self.patch_embed = stem(embed_dim, patch_size, dtype=dtype, rngs=rngs)
    self.pos_drop = nnx.Dropout(drop_rate, rngs=rngs)
    dpr = layers.drop_path_rates(drop_path_rate, sum(depths))
    stages = []
    for i, depth in enumerate(depths):
      start = sum(depths[:i])
      stages.append(self.make_stage(
          i, int(embed_dim * 2 ** i), depth, num_heads[i], window=window_size,
          drop_paths=dpr[start:start + depth], downsample=i < len(depths) - 1,
          mlp_ratio=mlp_ratio, dtype=dtype, rngs=rngs, **stage_options))
    self.layers = nnx.List(stages)
    self.num_features = int(embed_dim * 2 ** (len(depths) - 1))
    self.norm = layers.layer_norm(self.num_features, eps=1e-5, rngs=rngs)
    self.head_drop = nnx.Dropout(head_drop_rate, rngs=rngs)
    self.head = nnx.Linear(self.num_features, num_classes, kernel_init=head_init,
                           dtype=jnp.float32, rngs=rngs)

  def make_stage(self, index, dim, depth, num_heads, **kwargs):
    del index
    return VideoSwinStage(dim, depth, num_heads, **kwargs)

  def check_input(self, clips):
    if clips.ndim != 5 or clips.shape[-1] != 3:
      hint = (' That is an image batch (B, H, W, 3): use an image model, or add a time '
              'axis.' if clips.ndim == 4 else '')
      raise ValueError(f'{type(self).__name__} expects clips (B, T, H, W, 3) (input kind '
                       f'video); got shape {tuple(clips.shape)}.{hint}')

  def __call__(self, clips, *, train=False):
    self.check_input(clips)
    x = self.pos_drop(self.patch_embed(clips, train=train), deterministic=not train)
    aux = {'stage_features': []}
    for stage in self.layers:
      x, features = stage(x, train=train, aux=aux)
      aux['stage_features'].append(features)
    x = jnp.mean(self.norm(x), axis=(1, 2, 3))
    return self.head(self.head_drop(x, deterministic=not train)), aux
