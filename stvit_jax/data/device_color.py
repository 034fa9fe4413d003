"""PIL's colour ops on a uint8 batch, on device: per-image lookup tables and ImageEnhance blends.

Every op here is one of two shapes, so a batch where each image wants a different
op still costs one pass: a per-image 3x256 table gather (AutoContrast, Equalize,
Invert, Posterize, Solarize, SolarizeAdd) or one blend `degenerate + f * (x - degenerate)`
(PIL ImageEnhance Color / Contrast / Brightness / Sharpness). Results are quantised
to uint8 as PIL does. `color_jitter` is torchvision's ColorJitter on PIL images,
which calls these same ImageEnhance blends.
"""
import jax
import jax.numpy as jnp

IDENTITY_LUT = jnp.arange(256, dtype=jnp.int32)


def gray(images):
  """PIL convert('L'): (R*19595 + G*38470 + B*7471 + 2**15) >> 16; int32 (B, H, W, 1)."""
  x = images.astype(jnp.int32)
  g = x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 32768
  return (g >> 16)[..., None]


def to_uint8(x):
  """float -> uint8 with PIL's clip-and-truncate (ImagingBlend's CLIP8 of an int cast)."""
  return jnp.clip(jnp.floor(x), 0, 255).astype(jnp.uint8)


# ---------------------------------------------------------------- lookup tables (B, 3, 256)


def histograms(images):
  """Per-image, per-channel 256-bin histograms, int32 (B, 3, 256): one scatter-add."""
  b = images.shape[0]
  idx = images.astype(jnp.int32).reshape(b, -1, 3) + jnp.arange(3) * 256
  idx = idx + (jnp.arange(b) * 768)[:, None, None]
  counts = jnp.zeros(b * 768, jnp.int32).at[idx.reshape(-1)].add(1)
  return counts.reshape(b, 3, 256)


def equalize_lut(hist):
  """PIL ImageOps.equalize: lut[i] = (step // 2 + sum(h[:i])) // step, step =
  (count - h[last nonzero]) // 255; identity when step is 0 (one colour)."""
  last = 255 - jnp.argmax(hist[..., ::-1] > 0, axis=-1)            # last nonzero bin
  h_last = jnp.take_along_axis(hist, last[..., None], -1)[..., 0]
  step = (hist.sum(-1) - h_last) // 255
  safe = jnp.maximum(step, 1)[..., None]
  lut = (safe // 2 + jnp.cumsum(hist, -1) - hist) // safe
  return jnp.where(step[..., None] > 0, jnp.minimum(lut, 255), IDENTITY_LUT)


def autocontrast_lut(images):
  """PIL ImageOps.autocontrast(cutoff=0): stretch each channel's [min, max] to [0, 255]."""
  lo = images.min(axis=(1, 2)).astype(jnp.float32)[..., None]        # (B, 3, 1)
  hi = images.max(axis=(1, 2)).astype(jnp.float32)[..., None]
  scale = 255.0 / jnp.maximum(hi - lo, 1.0)
  lut = jnp.clip(jnp.floor(IDENTITY_LUT * scale - lo * scale), 0, 255).astype(jnp.int32)
  return jnp.where(hi > lo, lut, IDENTITY_LUT)


def posterize_lut(bits):
  """Keep the top `bits` (B,) bits: PIL's mask ~(2 ** (8 - bits) - 1)."""
  shift = (8 - jnp.clip(bits, 0, 8))[:, None]
  return (IDENTITY_LUT >> shift) << shift


def solarize_lut(threshold):
  """PIL ImageOps.solarize: invert values >= threshold (B,)."""
  return jnp.where(IDENTITY_LUT >= threshold[:, None], 255 - IDENTITY_LUT, IDENTITY_LUT)


def solarize_add_lut(add, threshold=128):
  """timm solarize_add: values below threshold get + add (B,), clipped at 255."""
  return jnp.where(IDENTITY_LUT < threshold, jnp.minimum(IDENTITY_LUT + add[:, None], 255),
                   IDENTITY_LUT)


def apply_lut(images, lut):
  """images uint8 (B, H, W, 3), lut int (B, 3, 256) or (B, 256) -> uint8: one gather."""
  b = images.shape[0]
  lut = jnp.broadcast_to(lut.reshape(b, -1, 256), (b, 3, 256)).reshape(b, 768)
  idx = images.astype(jnp.int32).reshape(b, -1, 3) + jnp.arange(3) * 256
  out = jnp.take_along_axis(lut, idx.reshape(b, -1), axis=1)
  return out.reshape(images.shape).astype(jnp.uint8)


# ---------------------------------------------------------------- ImageEnhance blends

# degenerate images, per image
BRIGHTNESS, CONTRAST, COLOR, SHARPNESS = range(4)


def smooth(images):
  """PIL ImageFilter.SMOOTH ([[1,1,1],[1,5,1],[1,1,1]] / 13, rounded), borders unchanged."""
  # Sums of shifted slices: exact on integers, and cheaper than a depthwise conv on CPU.
  x = images.astype(jnp.float32)
  rows = x[:, :-2] + x[:, 1:-1] + x[:, 2:]
  box = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
  inner = jnp.round((box + 4.0 * x[:, 1:-1, 1:-1]) / 13.0)
  return x.at[:, 1:-1, 1:-1].set(inner)


def degenerate(images, kind):
  """The image each ImageEnhance op blends towards, float32 (B, H, W, 3); kind (B,) int."""
  g = gray(images).astype(jnp.float32)
  mean = jnp.floor(g.mean(axis=(1, 2, 3)) + 0.5)                 # PIL: int(mean + 0.5)
  k = kind[:, None, None, None]
  out = jnp.where(k == COLOR, g, jnp.where(k == CONTRAST, mean[:, None, None, None], 0.0))
  # The SMOOTH filter costs a few passes; skip it when no image of the batch sharpens.
  sharp = k == SHARPNESS
  return jax.lax.cond(jnp.any(sharp), lambda o: jnp.where(sharp, smooth(images), o),
                      lambda o: jnp.broadcast_to(o, images.shape), out)


def blend(images, kind, factor):
  """PIL Image.blend(degenerate, image, factor) per image; factor (B,) float, 1 = unchanged."""
  d = degenerate(images, kind)
  out = to_uint8(d + factor[:, None, None, None] * (images.astype(jnp.float32) - d))
  return jnp.where((factor == 1.0)[:, None, None, None], images, out)


# ---------------------------------------------------------------- colour jitter

JITTER_KINDS = (BRIGHTNESS, CONTRAST, COLOR)  # torchvision's brightness, contrast, saturation


def color_jitter(keys, images, strength):
  """torchvision ColorJitter(brightness=contrast=saturation=strength) on PIL images, per image.

  keys (B,) PRNG keys, images uint8 (B, H, W, 3). Each factor is U[max(0, 1 - s), 1 + s]
  and the three ops run in a random order (torchvision's randperm; hue is off), each
  being PIL ImageEnhance Brightness / Contrast / Color with uint8 results, as in timm's
  PIL pipeline.
  """
  if not strength > 0:
    raise ValueError(f'color_jitter strength={strength!r}: must be > 0 (0 disables the call)')

  def params(key):
    k_factor, k_order = jax.random.split(key)
    f = jax.random.uniform(k_factor, (3,), minval=max(0.0, 1.0 - strength),
                           maxval=1.0 + strength)
    return f, jax.random.permutation(k_order, 3)

  factors, order = jax.vmap(params)(keys)
  kinds = jnp.asarray(JITTER_KINDS)
  for i in range(3):
    op = order[:, i]
    images = blend(images, kinds[op], jnp.take_along_axis(factors, op[:, None], 1)[:, 0])
  return images
