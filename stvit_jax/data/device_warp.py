"""PIL's `Image.transform(AFFINE)` on a uint8 batch, on device: one warp, a 2x3 matrix per image.

PIL's convention (libImaging/Geometry.c): output pixel (x, y) reads the input at
(a x' + b y' + c, d x' + e y' + f) with x' = x + 0.5, y' = y + 0.5 (pixel centres);
a point outside [0, W) x [0, H) takes the fill colour, one inside is interpolated
from taps clamped to the image (edge pixels repeat, the fill does not bleed in).
Bicubic is PIL's transform kernel, a = -1 (Geometry.c's BICUBIC; PIL's resize uses
a = -0.5, which here would differ from PIL's transform by ~5 grey levels on average);
the interpolated value is truncated, as PIL does. Checked against timm's PIL outputs in
tests/test_device_randaugment.py.
"""
import jax
import jax.numpy as jnp

INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest')
BICUBIC_A = -1.0


def _cubic(t, a=BICUBIC_A):
  """Keys' cubic convolution kernel with parameter a."""
  t = jnp.abs(t)
  near = ((a + 2) * t - (a + 3)) * t * t + 1
  far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return jnp.where(t <= 1, near, jnp.where(t < 2, far, 0.0))


def _taps(s, interpolation):
  """Integer taps and their weights along one axis for sample positions s (pixel units,
  centres at integers): [(index, weight), ...]."""
  if interpolation == 'nearest':
    return [(jnp.floor(s + 0.5), jnp.ones_like(s))]
  base = jnp.floor(s)
  d = s - base
  if interpolation == 'bilinear':
    return [(base, 1 - d), (base + 1, d)]
  return [(base + k, _cubic(d - k)) for k in (-1, 0, 1, 2)]


def affine(images, matrix, fill, interpolation='bicubic'):
  """images uint8 (B, H, W, 3), matrix float (B, 6) = PIL's (a, b, c, d, e, f) -> uint8.

  fill: the colour (3 ints) of points mapped outside the input.
  """
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f'interpolation={interpolation!r}: valid values are {INTERPOLATIONS}')
  b, h, w, _ = images.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                        jnp.arange(w, dtype=jnp.float32) + 0.5, indexing='ij')
  m = matrix.astype(jnp.float32)[:, :, None, None]
  x_in = m[:, 0] * xs + m[:, 1] * ys + m[:, 2]                       # (B, H, W)
  y_in = m[:, 3] * xs + m[:, 4] * ys + m[:, 5]
  inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
  flat = images.reshape(b, h * w, 3).astype(jnp.float32)
  out = jnp.zeros((b, h * w, 3), jnp.float32)
  for row, wy in _taps(y_in - 0.5, interpolation):
    row = jnp.clip(row, 0, h - 1).astype(jnp.int32) * w
    for col, wx in _taps(x_in - 0.5, interpolation):
      idx = (row + jnp.clip(col, 0, w - 1).astype(jnp.int32)).reshape(b, h * w, 1)
      out = out + (wy * wx).reshape(b, h * w, 1) * jnp.take_along_axis(flat, idx, axis=1)
  out = out.reshape(images.shape)
  # PIL clips and truncates the interpolated value (Geometry.c); rounding would be off by
  # one on ~40% of pixels.
  out = jnp.clip(jnp.floor(out), 0, 255).astype(jnp.uint8)
  return jnp.where(inside[..., None], out, jnp.asarray(fill, jnp.uint8))


def on_rows(fn, need, images, *row_args, chunk=16):
  """fn(images[rows], *(a[rows] for a in row_args)) on the rows where need (B,) is True,
  the others unchanged; fn must treat rows independently.

  Those rows are gathered `chunk` at a time into a sub-batch (a while loop over
  ceil(count / chunk) chunks; none when no row needs it), so a pass that one image in
  six needs costs about one chunk instead of the whole batch.
  """
  b = images.shape[0]
  chunk = min(chunk, b)
  order = jnp.argsort(~need, stable=True)          # the rows that need fn first
  count = jnp.sum(need)

  def body(state):
    start, out = state
    pos = start + jnp.arange(chunk)
    rows = order[jnp.minimum(pos, b - 1)]
    done = fn(out[rows], *(a[rows] for a in row_args))
    # Positions past the count write nowhere (index b, dropped): no duplicate row writes.
    return start + chunk, out.at[jnp.where(pos < count, rows, b)].set(done, mode='drop')

  return jax.lax.while_loop(lambda state: state[0] < count, body, (jnp.int32(0), images))[1]


def warp_where(images, matrix, warp, fill, interpolation='bicubic'):
  """`affine` on the images where warp (B,) is True (see on_rows), the others unchanged. With
  timm's DeiT policy about 1 image in 6 warps per layer: a 64-image batch usually costs one
  chunk of 16, a quarter of warping all 64."""
  return on_rows(lambda x, m: affine(x, m, fill, interpolation), warp, images, matrix)
