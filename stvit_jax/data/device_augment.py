"""Per-batch pixel work on device, inside the jitted steps (as timm's GPU prefetcher does).

With `data.normalize_on='device'` (the default) the host pipeline ships uint8
images, a quarter of float32's bytes, and the steps call `train_images` /
`eval_images`: normalisation and timm's random erasing run here, on the
accelerator, where they cost next to nothing, instead of on the host CPUs that
decode JPEGs. With 'host' the tf.data pipeline does both and ships float32
(the steps then pass images through).

Pure jnp; randomness comes from the key the step derives from (seed, step), so
a resumed run erases the same boxes as an uninterrupted one.
"""
import math

import jax
import jax.numpy as jnp

NORMALIZE_ON = ('device', 'host')


def normalize_on(cfg):
  return cfg.get('normalize_on', 'device')  # data configs written before the field existed


def image_dtype(cfg):
  """The dtype of the host pipeline's images: uint8 when normalising on device."""
  return jnp.uint8 if normalize_on(cfg) == 'device' else jnp.float32


def normalize(images, mean, std):
  """uint8 (..., 3) -> float32 (x / 255 - mean) / std, per channel."""
  mean = jnp.asarray(mean, jnp.float32) * 255.0
  std = jnp.asarray(std, jnp.float32) * 255.0
  return (images.astype(jnp.float32) - mean) / std


def random_erasing(rng, images, prob, *, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
  """timm `RandomErasing(prob, mode='pixel', max_count=1)` on each image of a normalised batch.

  Per image, with probability `prob`: up to 10 tries of an area fraction
  U(min_area, max_area) and a log-uniform aspect in [min_aspect, 1 / min_aspect];
  the first box that fits (h < H and w < W) at a uniform position is filled with
  N(0, 1) noise per pixel and channel. No try fits: unchanged, as in timm.
  """
  b, height, width = images.shape[:3]
  k_area, k_aspect, k_top, k_left, k_apply, k_noise = jax.random.split(rng, 6)
  area = height * width * jax.random.uniform(k_area, (b, 10), minval=min_area, maxval=max_area)
  log_aspect = jax.random.uniform(k_aspect, (b, 10), minval=math.log(min_aspect),
                                  maxval=-math.log(min_aspect))
  aspect = jnp.exp(log_aspect)
  hs = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)   # round half to even, as Python
  ws = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  ok = (ws < width) & (hs < height)
  first = jnp.argmax(ok, axis=1)[:, None]
  h = jnp.take_along_axis(hs, first, 1)[:, 0]
  w = jnp.take_along_axis(ws, first, 1)[:, 0]
  # random.randint(0, H - h): uniform over H - h + 1 positions
  top = jnp.floor(jax.random.uniform(k_top, (b,)) * (height - h + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(k_left, (b,)) * (width - w + 1)).astype(jnp.int32)
  apply = jnp.any(ok, axis=1) & (jax.random.uniform(k_apply, (b,)) < prob)
  ys = jnp.arange(height)[None, :, None]
  xs = jnp.arange(width)[None, None, :]
  box = ((ys >= top[:, None, None]) & (ys < (top + h)[:, None, None])
         & (xs >= left[:, None, None]) & (xs < (left + w)[:, None, None])
         & apply[:, None, None])
  noise = jax.random.normal(k_noise, images.shape, images.dtype)
  return jnp.where(box[..., None], noise, images)


def _normalized(images, cfg):
  # uint8 are raw pixels from the host pipeline; float batches (synthetic ones in tests
  # and benchmarks, or a host that normalised) are taken as normalised already.
  if images.dtype == jnp.uint8:
    return normalize(images, cfg.mean, cfg.std)
  return images


def train_images(rng, images, cfg):
  """The train step's images: normalised and randomly erased, unless the host did both."""
  if normalize_on(cfg) != 'device':
    return images
  images = _normalized(images, cfg)
  if cfg.reprob > 0:
    images = random_erasing(rng, images, cfg.reprob)
  return images


def eval_images(images, cfg):
  """The eval step's images: normalised, unless the host did it."""
  if normalize_on(cfg) != 'device':
    return images
  return _normalized(images, cfg)
