"""The resize of decoded windows to the model's size, on the accelerator, as PIL does it.

The host decodes each image's window (the RandomResizedCrop window for training, the
centre window for evaluation) at its own size and packs the windows of a batch into
one uint8 buffer (`data/windows.py`). Here, inside the jitted step, each window is
resized to (size, size) with PIL's antialiased bicubic filter, the one timm's
transforms use (`Image.resize(..., BICUBIC)`):

* PIL's coefficients (Resample.c `precompute_coeffs`): the Keys cubic with a = -0.5,
  its support widened by the downscale factor (antialiasing), the taps clipped to
  the window and renormalised there;
* the horizontal pass first, rounded to uint8, then the vertical one, rounded again
  (Resample.c's order; Pillow 13 gives the vertical pass first for some windows
  taller than wide, measured: our result then differs by 0.2-0.25 grey levels on
  average, the two orders' own difference).

Each pass is one batched matrix product with per-image weights that are zero
outside the window, so windows of any size up to the static canvas `max_side` share
one program. A horizontal flip is the horizontal weights reversed: it costs nothing.
The products run at full float32 precision: at the accelerators' default (one bf16
pass) the weights would be off by up to 2^-9, half a grey level at 255.
"""
import jax
import jax.numpy as jnp

PRECISION = jax.lax.Precision.HIGHEST


def _bicubic(x, a=-0.5):
  x = jnp.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def pil_weights(in_size, out_size, max_side):
  """PIL's bicubic resampling weights from `in_size` input pixels (an int32 array, one per
  image) to `out_size` outputs: float32 (..., out_size, max_side), zero beyond in_size."""
  in_size = jnp.asarray(in_size, jnp.float32)[..., None, None]
  scale = in_size / out_size
  filter_scale = jnp.maximum(scale, 1.0)
  support = 2.0 * filter_scale
  center = (jnp.arange(out_size, dtype=jnp.float32)[:, None] + 0.5) * scale
  # PIL's C casts truncate toward zero; the bounds are clipped to [0, in_size] after.
  lo = jnp.maximum(jnp.trunc(center - support + 0.5), 0.0)
  hi = jnp.minimum(jnp.trunc(center + support + 0.5), in_size)
  x = jnp.arange(max_side, dtype=jnp.float32)
  w = _bicubic((x - center + 0.5) / filter_scale)
  w = jnp.where((x >= lo) & (x < hi), w, 0.0)
  total = w.sum(-1, keepdims=True)
  return w / jnp.where(total == 0.0, 1.0, total)


def _round_u8(x):
  """PIL's 8-bit passes: round half up, clip to [0, 255] (kept in float32)."""
  return jnp.clip(jnp.floor(x + 0.5), 0.0, 255.0)


def resize(canvas, heights, widths, size, flip=None):
  """canvas uint8 (B, S, S, 3) holding each window at its top-left, (heights, widths) int32 (B,)
  its extent; -> uint8 (B, size, size, 3), PIL's bicubic resize of each window, mirrored
  left-right where `flip` (bool (B,)) is set."""
  side = canvas.shape[1]
  wx = pil_weights(widths, size, side)            # (B, size, S)
  wy = pil_weights(heights, size, side)
  if flip is not None:  # output column j samples where column size - 1 - j did
    wx = jnp.where(flip[:, None, None], wx[:, ::-1], wx)
  x = canvas.astype(jnp.float32)
  rows = _round_u8(jnp.einsum('bjx,byxc->byjc', wx, x, precision=PRECISION))
  out = _round_u8(jnp.einsum('biy,byjc->bijc', wy, rows, precision=PRECISION))
  return out.astype(jnp.uint8)


def unpack(buffer, offsets, heights, widths, max_side):
  """The packed windows on a canvas (data/windows.py): buffer uint8 (D, C), device d holding
  rows [d * B / D, (d + 1) * B / D), row b's (h_b, w_b, 3) pixels from offsets[b] ->
  uint8 (B, max_side, max_side, 3), each window at the top left. Pixels beyond a window
  are whatever the buffer holds there: the resize weights are zero for them. Under
  shard_map each device sees D = 1 and its own rows."""
  del heights  # rows past a window's height get zero weight
  devices, cap = buffer.shape
  base = (jnp.arange(offsets.shape[0], dtype=jnp.int32) // (offsets.shape[0] // devices)) * cap
  y = jnp.arange(max_side, dtype=jnp.int32)[None, :, None, None]
  x = jnp.arange(max_side, dtype=jnp.int32)[None, None, :, None]
  c = jnp.arange(3, dtype=jnp.int32)[None, None, None, :]
  w = widths[:, None, None, None]
  start = (base + offsets)[:, None, None, None]
  index = start + (y * w + jnp.minimum(x, w - 1)) * 3 + c
  return jnp.take(buffer.reshape(-1), index, mode='clip')


def resize_packed(buffer, offsets, heights, widths, *, size, max_side, flip=None):
  """`unpack` then `resize`: a packed batch of windows -> uint8 (B, size, size, 3)."""
  canvas = unpack(buffer, offsets, heights, widths, max_side)
  return resize(canvas, heights, widths, size, flip)
