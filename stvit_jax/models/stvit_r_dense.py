"""STViT-R dense mode: the detection / segmentation backbone (docs/models.md section 4).

Same modules and parameter paths as the classification `STViTSwin(recovery=True)`
(so the ImageNet checkpoint loads unchanged), but every block is computed as in
the authors' detection backbone (changsn/STViT-R-Object-Detection,
`mmdet/models/backbones/{swin_transformer,layers}.py`) on inputs of any size:

* Swin blocks: LN1, zero-pad the grid to a multiple of the window, always the
  window given (no shrinking), shift window//2 on odd blocks of stages 1, 2, 4
  (stage 4 too, unlike 224^2 classification), the SW-MSA mask built for the
  padded grid; padded tokens are not otherwise masked (as in Swin detection).
* Stage 3, per 7x7 window of the zero-padded grid, key windows centred on the
  window (F.pad(lo, hi) + F.unfold(k, stride 7), lo = (k - 7) // 2):
    stgm1     S = P + g1*Attn(LN1(P), LN1(K14)); P = 3x3 max pool of the window,
              K14 = the 14x14 image tokens centred on it (P is not among the keys)
    stgm2     S = S + g1*Attn(LN1(S_w), LN1(K21)), S_w = the window's 3x3 tokens,
              K21 = 21x21 image tokens (no semantic keys, unlike classification)
    local     SBlock on each window's 3x3 semantic tokens
    global    SBlock on all semantic tokens (no mask, as in the official code)
    recovery  X = X + g1*Attn(LN1(X_w), LN1(S27)): each 7x7 image window queries
              the 27x27 semantic neighbourhood centred on its 3x3 tokens (stride 3)
  (then the MLP half of each block). Keys outside the image or in its padding,
  and semantic keys pooled wholly from padding, get -1000 on their logits.

Inside a stage the image grid is carried padded to the window (B, Hp, Wp, C);
the padded cells may hold anything: each block zeroes them where the official
code zero-pads, so nothing leaks into real positions (tests/test_dense.py).
All windows, index tables and masks are numpy constants of the input size.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stvit_jax.models import layers, stvit_swin, swin

MASK = -1000.0  # the official pad_mask value added to padded keys' logits


def ceil_to(n, m):
  return -(-n // m) * m


def real_map(hw, padded):
  """(Hp, Wp) numpy bool: True on the real H x W area of a bottom/right-padded grid."""
  valid = np.zeros(padded, bool)
  valid[:hw[0], :hw[1]] = True
  return valid


def pad_grid(x, padded):
  """Zero-pads (B, H, W, C) at the bottom / right to `padded` = (Hp, Wp)."""
  return jnp.pad(x, ((0, 0), (0, padded[0] - x.shape[1]), (0, padded[1] - x.shape[2]), (0, 0)))


def zero_padding(x, valid):
  return jnp.where(valid[None, :, :, None], x, jnp.zeros((), x.dtype))


def centred_window_index(grid, step, k):
  """Index table of the official `F.pad(lo, hi)` + `F.unfold(kernel k, stride step)`.

  For a (h, w) grid cut into step x step windows (h, w multiples of step),
  returns `lo`, `hi` and (nW, k*k) flat indices into the grid extended by lo
  rows/cols before and hi after: window (i, j) gets rows step*i - lo ..
  step*i - lo + k - 1 (and likewise columns) of the original grid, windows
  and keys both in raster order. lo = (k - step) // 2, hi = k - step - lo.
  """
  h, w = grid
  if k < step:
    raise ValueError(f'key window {k} must be at least the window it is centred on ({step})')
  lo = (k - step) // 2
  hi = k - step - lo
  width = w + lo + hi
  r0 = np.arange(0, h, step)[:, None, None, None] + np.arange(k)[None, None, :, None]
  c0 = np.arange(0, w, step)[None, :, None, None] + np.arange(k)[None, None, None, :]
  return lo, hi, (r0 * width + c0).reshape(-1, k * k)


def centred_windows(x, valid, step, k, project=lambda t: t):
  """(B, h, w, C) grid -> keys (B*nW, k*k, C') and their additive mask (B*nW, 1, 1, k*k):
  MASK where a key lies outside the grid or outside `valid`.

  `project` (per-token, e.g. LN1 + kv Linear) runs once on the zero-extended
  grid before the overlapping windows are gathered. The official code
  projects every window copy; per-token ops commute with the gather, so the
  values are the same at a fraction of the cost (keys overlap up to 9x).

  Official bug, fixed here: the detection code builds the mask with
  `pad_mask[:, -pad_b:, -pad_r:] = -1000`, which marks only the bottom-right
  corner where padded rows and padded columns cross, and with `-0:` (no
  padding on one side) the whole grid. With both paddings zero every key
  gets -1000 alike, so nothing is masked, not even the zeros that F.pad adds
  around the border. The evident intent is masking every key outside the real
  tokens (padded rows OR padded columns, plus the border), which is what this does.
  """
  b, h, w, c = x.shape
  lo, hi, idx = centred_window_index((h, w), step, k)
  ext = project(jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0))))
  ext = ext.reshape(b, -1, ext.shape[-1])
  keys = ext[:, idx.reshape(-1)].reshape(-1, k * k, ext.shape[-1])
  key_ok = np.pad(valid, ((lo, hi), (lo, hi))).reshape(-1)[idx]  # (nW, k*k)
  bias = np.where(key_ok, 0.0, MASK).astype(np.float32)[:, None, None, :]
  return keys, np.tile(bias, (b, 1, 1, 1))


def masked_attention(attn, q_in, kv, bias):
  """`layers.CrossAttention` on projected keys/values `kv` (B', Nk, 2C) with an
  additive logit bias (the official `mask=`)."""
  n, c = q_in.shape[1], q_in.shape[2]
  q = attn.q(q_in).reshape(q_in.shape[0], n, attn.num_heads, -1)
  kv = kv.reshape(kv.shape[0], kv.shape[1], 2, attn.num_heads, -1)
  out, weights = layers.attention(q, kv[:, :, 0], kv[:, :, 1], bias, attn.attention_impl)
  return attn.proj(out.reshape(q_in.shape[0], n, c)), weights


def residual(block, x, a, *, train):
  """x + DropPath(g1 * a), then + DropPath(g2 * MLP(LN2(.))): the two halves of an SBlock."""
  x = x + block.drop_path(layers.scaled(block.layer_scale_1, a), train=train)
  mlp = block.mlp(block.norm2(x), train=train)
  return x + block.drop_path(layers.scaled(block.layer_scale_2, mlp), train=train)


# ----------------------------------------------------------------------------- Swin


def swin_block(block, x, valid, shift, *, train):
  """Swin detection block on a window-padded grid x (B, Hp, Wp, C)."""
  _, hp, wp, _ = x.shape
  w = block.attn.window
  y = zero_padding(block.norm1(x), valid)  # official: LN1, then F.pad with zeros
  if shift:
    y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
  mask = swin.shift_mask(hp, wp, w, shift) if shift else None  # built for the padded grid
  a, _ = block.attn(layers.window_partition(y, w), mask)
  a = layers.window_reverse(a, w, hp, wp)
  if shift:
    a = jnp.roll(a, (shift, shift), axis=(1, 2))
  x = x + block.drop_path(a, train=train)
  return x + block.drop_path(block.mlp(block.norm2(x), train=train), train=train)


def swin_blocks(stage, x, hw, *, train):
  """The blocks of a Swin stage on x (B, Hp, Wp, C) padded to the window; real size hw."""
  valid = real_map(hw, x.shape[1:3])
  for i, block in enumerate(stage.blocks):
    x = swin_block(block, x, valid, block.attn.window // 2 if i % 2 else 0, train=train)
  return x


def patch_merge(merging, x):
  """Official detection PatchMerging: zero-pad odd H / W, 2x2 concat, LN, Linear."""
  x = jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)))
  x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
  return merging.reduction(merging.norm(x))


# ----------------------------------------------------------------------------- stage 3


def semantic_valid_map(hw, padded, window, t):
  """(sH, sW) bool: False for semantic tokens whose max-pool bin lies wholly in the padding.

  A semantic row is (window row i, bin a) and pools image rows
  window*i + start(a) ..; it is padding when that first row is >= H.
  These are the recovery block's padded keys. The official RestoreBlock
  applies the image paddings (pad_b, pad_r, in image tokens) as slices of the
  semantic grid, with the corner / `-0:` bug of `centred_windows`; the evident
  intent, masking the semantic tokens that stand for padding, is this map.
  """
  starts = np.array([s for s, _ in layers.adaptive_pool_bins(window, t)])
  rows = (np.arange(padded[0] // window)[:, None] * window + starts).reshape(-1) < hw[0]
  cols = (np.arange(padded[1] // window)[:, None] * window + starts).reshape(-1) < hw[1]
  return rows[:, None] & cols[None, :]


def semantic_attention(block, x, valid, s, *, window, t, k, train):
  """Official `SemanticAttentionBlock` (STGM layers 1 and 2).

  x (B, Hp, Wp, C) image tokens padded to the window. s None: STGM-1, the
  queries are the 3x3 max-pooled centres of each window (raw, the residual
  comes from them); s (B, sH, sW, C): STGM-2, the queries are each window's
  semantic tokens. Keys are the k x k image tokens centred on the window.
  Returns the semantic grid (B, sH, sW, C) and weights (B, nW, h, t*t, k*k).
  """
  b, hp, wp, c = x.shape
  x = zero_padding(x, valid)
  if s is None:
    windows = layers.window_partition(x, window).reshape(-1, window, window, c)
    shortcut = layers.adaptive_pool(windows, t, 'max').reshape(-1, t * t, c)
  else:
    shortcut = layers.window_partition(s, t)
  kv, bias = centred_windows(x, valid, window, k, lambda g: block.attn.kv(block.norm1(g)))
  a, weights = masked_attention(block.attn, block.norm1(shortcut), kv, bias)
  # DropPath sees (B*nW, t*t, C) here, so it drops per window, as the official code does.
  s = shortcut + block.drop_path(layers.scaled(block.layer_scale_1, a), train=train)
  s = layers.window_reverse(s, t, hp // window * t, wp // window * t)
  s = s + block.drop_path(layers.scaled(block.layer_scale_2, block.mlp(block.norm2(s), train=train)),
                          train=train)
  return s, None if weights is None else weights.reshape(b, -1, *weights.shape[1:])


def local_semantic(block, s, t, *, train):
  """Official `Block(local=True)`: self-attention in t x t windows of the semantic grid."""
  _, sh, sw, _ = s.shape
  windows = layers.window_partition(block.norm1(s), t)
  a, _ = block.attn(windows, windows)
  return residual(block, s, layers.window_reverse(a, t, sh, sw), train=train)


def global_semantic(block, s, *, train):
  """Official `Block`: self-attention over all semantic tokens (padding ones included)."""
  b, sh, sw, c = s.shape
  out, _ = block(s.reshape(b, -1, c), train=train)
  return out.reshape(b, sh, sw, c)


def restore(block, x, valid, s, s_valid, *, window, t, k, train):
  """Official `RestoreBlock`: each window x window block of image tokens queries the
  k x k semantic tokens centred on its t x t semantic tokens; residual on x."""
  _, hp, wp, _ = x.shape
  shortcut = layers.window_partition(zero_padding(x, valid), window)
  kv, bias = centred_windows(s, s_valid, t, k, lambda g: block.attn.kv(block.norm1(g)))
  a, _ = masked_attention(block.attn, block.norm1(shortcut), kv, bias)
  x = shortcut + block.drop_path(layers.scaled(block.layer_scale_1, a), train=train)
  x = layers.window_reverse(x, window, hp, wp)
  mlp = block.mlp(block.norm2(x), train=train)
  return x + block.drop_path(layers.scaled(block.layer_scale_2, mlp), train=train)


def semantic_blocks(stage, x, hw, *, key_windows=(14, 21, 27), train, aux=None):
  """The blocks of an STViT-R stage 3 on x (B, Hp, Wp, C) padded to the window."""
  aux = {} if aux is None else aux
  window, t = stage.blocks[0].attn.window, stage.t
  valid = real_map(hw, x.shape[1:3])
  s_valid = semantic_valid_map(hw, x.shape[1:3], window, t)
  k1, k2, k3 = key_windows
  s = None
  for i, block in enumerate(stage.blocks):
    role = stage.role(i)
    if role == 'swin':
      x = swin_block(block, x, valid, 0, train=train)
    elif role in ('stgm1', 'stgm2'):
      s, weights = semantic_attention(block, x, valid, None if role == 'stgm1' else s,
                                      window=window, t=t, k=k1 if role == 'stgm1' else k2,
                                      train=train)
      aux.setdefault('stgm_attn', []).append(weights)
      if role == 'stgm2':
        aux.setdefault('semantic_tokens', []).append(s)
    elif role == 'local':
      s = local_semantic(block, s, t, train=train)
    elif role == 'global':
      s = global_semantic(block, s, train=train)
    else:
      x = restore(block, x, valid, s, s_valid, window=window, t=t, k=k3, train=train)
  return x


# ----------------------------------------------------------------------------- model


class STViTRDense(stvit_swin.STViTSwin):
  """STViT-R as a dense backbone: `(images (B, H, W, 3), *, train) -> (logits, aux)`.

  H and W are any multiples of 4. aux['stage_features'] holds the four stage
  outputs (B, ceil(H/4/2^i), ceil(W/4/2^i), C_i) before merging (the official
  backbone's `x_out`, without its per-output norms, which are not part of the
  ImageNet checkpoint); aux['semantic_tokens'] the (B, sH, sW, C) semantic
  grids after each STGM-2. The logits are the classification head on the
  pooled last stage. The modules are those of `STViTSwin(recovery=True)` built
  for `img_size` (the pretraining size; it only fixes parameter shapes), so
  parameter paths and shapes are the classification model's.
  """

  def __init__(self, *, key_window_1=14, key_window_2=21, restore_window=27, **kwargs):
    if not kwargs.get('recovery', True):
      raise ValueError('dense mode exists for STViT-R only (recovery=True); got recovery=False')
    if kwargs.get('use_global_init', False):
      raise ValueError('use_global_init=True has no dense form (the detection backbone has no '
                       'global initialization); use use_global_init=False')
    super().__init__(**kwargs)
    window, t = self.layers[2].blocks[0].attn.window, self.layers[2].t
    for field, k, step in (('key_window_1', key_window_1, window),
                           ('key_window_2', key_window_2, window),
                           ('restore_window', restore_window, t)):
      if k < step:
        raise ValueError(f'{field}={k} must be at least the window it is centred on ({step})')
    self.key_windows = (key_window_1, key_window_2, restore_window)

  def __call__(self, images, *, train=False):
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % 4 or images.shape[2] % 4:
      raise ValueError(f'{type(self).__name__} expects images (B, H, W, 3) with H and W '
                       f'multiples of 4 (the stride-4 stem); got {images.shape}')
    b = images.shape[0]
    x = self.patch_embed(images, train=train)
    x = self.pos_drop(x, deterministic=not train).reshape(b, images.shape[1] // 4,
                                                          images.shape[2] // 4, -1)
    aux = {'stage_features': [], 'semantic_tokens': [], 'stgm_attn': []}
    for stage in self.layers:
      hw = x.shape[1:3]
      window = stage.blocks[0].attn.window
      x = pad_grid(x, (ceil_to(hw[0], window), ceil_to(hw[1], window)))
      if isinstance(stage, stvit_swin.SemanticStage):
        x = semantic_blocks(stage, x, hw, key_windows=self.key_windows, train=train, aux=aux)
      else:
        x = swin_blocks(stage, x, hw, train=train)
      x = x[:, :hw[0], :hw[1]]
      aux['stage_features'].append(x)
      if stage.downsample is not None:
        x = patch_merge(stage.downsample, x)
    x = self.norm(x.reshape(b, -1, x.shape[-1]))
    return self.head(jnp.mean(x, axis=1)), aux
