"""Per-example train / eval transforms in TF, following timm's `create_transform`.

train: inception crop (RandomResizedCrop) -> resize -> hflip -> RandAugment ->
       colour jitter (only without RandAugment, as in timm) [-> normalise -> random erasing]
eval:  resize shorter side to floor(size / crop_pct) -> centre crop [-> normalise]
Images are quantised to uint8 after resizing, as PIL does. The bracketed steps
run here only with data.normalize_on='host'; by default the transforms return
uint8 and the jitted steps normalise and erase on device (device_augment.py).
All randomness is stateless, drawn from the per-example `seed` (int64 (2,)).
"""
import math

import tensorflow as tf

from stvit_jax.data import augment
from stvit_jax.data import device_augment

INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'area')
# libjpeg's accurate integer IDCT, the one PIL (and so timm) decodes with: bitwise PIL's
# pixels on imagenet_like JPEGs, where TF's default (INTEGER_FAST) is 1.0-1.3 grey levels
# off on average, for about 4 % more decode time (tests/test_device_resize.py).
JPEG_DCT = 'INTEGER_ACCURATE'


def _uniform(seed, shape=(), lo=0.0, hi=1.0):
  return tf.random.stateless_uniform(shape, seed, lo, hi)


def _randint(seed, lo, hi_inclusive, shape=()):
  """Uniform integers in [lo, hi_inclusive] (per element bounds allowed)."""
  span = tf.cast(hi_inclusive - lo + 1, tf.float32)
  return lo + tf.cast(tf.floor(_uniform(seed, shape) * span), tf.int32)


def sample_crop(height, width, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """timm RandomResizedCropAndInterpolation.get_params: 10 tries, then a centre crop.

  Returns int32 (top, left, h, w).
  """
  s = tf.random.experimental.stateless_split(seed, 4)
  h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = h_f * w_f * _uniform(s[0], [10], scale[0], scale[1])
  aspect = tf.exp(_uniform(s[1], [10], math.log(ratio[0]), math.log(ratio[1])))
  ws = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  hs = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  ok = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
  h_try, w_try = hs[first], ws[first]
  top = _randint(s[2], 0, height - h_try)
  left = _randint(s[3], 0, width - w_try)
  # Fallback: the whole image, trimmed to the nearest allowed aspect ratio.
  in_ratio = w_f / h_f
  w_fb = tf.where(in_ratio > ratio[1], tf.cast(tf.round(h_f * ratio[1]), tf.int32), width)
  h_fb = tf.where(in_ratio < ratio[0], tf.cast(tf.round(w_f / ratio[0]), tf.int32), height)
  any_ok = tf.reduce_any(ok)
  h = tf.where(any_ok, h_try, h_fb)
  w = tf.where(any_ok, w_try, w_fb)
  top = tf.where(any_ok, top, (height - h_fb) // 2)
  left = tf.where(any_ok, left, (width - w_fb) // 2)
  return top, left, h, w


def _resize(image, size, method):
  """Resize to `size` (h, w) and quantise like PIL (uint8 values, float32 dtype)."""
  x = tf.image.resize(image, size, method=method, antialias=method != 'nearest')
  return tf.round(tf.clip_by_value(x, 0.0, 255.0))


def _decode_crop(image_bytes, is_jpeg, crop_fn):
  """Decodes only the crop window for JPEG; other formats decode fully, then slice."""
  if is_jpeg:
    shape = tf.io.extract_jpeg_shape(image_bytes)
    top, left, h, w = crop_fn(shape[0], shape[1])
    return tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([top, left, h, w]), channels=3,
                                    dct_method=JPEG_DCT)
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  top, left, h, w = crop_fn(tf.shape(image)[0], tf.shape(image)[1])
  return image[top:top + h, left:left + w]


def flip(image, seed, prob):
  """Horizontal flip with probability prob (tf.cond: the image is reversed only when flipped)."""
  return tf.cond(_uniform(seed) < prob, lambda: tf.reverse(image, [1]), lambda: image)


def color_jitter(image, seed, strength):
  """torchvision ColorJitter(b=c=s=strength), ops in random order; image float in [0, 255]."""
  s = tf.random.experimental.stateless_split(seed, 4)
  lo = max(0.0, 1.0 - strength)
  factors = _uniform(s[0], [3], lo, 1.0 + strength)
  order = tf.argsort(_uniform(s[1], [3]))

  def gray(x):
    return tf.reduce_sum(x * tf.constant([0.2989, 0.587, 0.114]), -1, keepdims=True)

  def blend(x, degenerate, f):
    return tf.clip_by_value(f * x + (1.0 - f) * degenerate, 0.0, 255.0)

  ops = [lambda x, f: blend(x, tf.zeros_like(x), f),           # brightness
         lambda x, f: blend(x, tf.reduce_mean(gray(x)), f),    # contrast
         lambda x, f: blend(x, gray(x), f)]                    # saturation
  for i in range(3):
    k = order[i]
    image = tf.switch_case(k, [lambda op=op, x=image: op(x, factors[k]) for op in ops])
  return image


def random_erasing(image, seed, prob, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
  """timm RandomErasing(mode='pixel', max_count=1) on a normalised image: one box of N(0, 1)."""
  s = tf.random.experimental.stateless_split(seed, 6)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  area = tf.cast(height * width, tf.float32) * _uniform(s[0], [10], min_area, max_area)
  aspect = tf.exp(_uniform(s[1], [10], math.log(min_aspect), -math.log(min_aspect)))
  hs = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  ws = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  ok = (ws < width) & (hs < height)
  first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
  h, w = hs[first], ws[first]
  top = _randint(s[2], 0, height - h)
  left = _randint(s[3], 0, width - w)
  apply = tf.reduce_any(ok) & (_uniform(s[4]) < prob)
  ys = tf.range(height)[:, None, None]
  xs = tf.range(width)[None, :, None]
  box = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w) & apply
  return tf.where(box, tf.random.stateless_normal(tf.shape(image), s[5]), image)


def _normalize(image, cfg):
  mean = tf.constant(cfg.mean, tf.float32) * 255.0
  std = tf.constant(cfg.std, tf.float32) * 255.0
  return (image - mean) / std


def _on_host(cfg):
  return device_augment.normalize_on(cfg) == 'host'


def _to_uint8(image):
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def train_transform(cfg, is_jpeg):
  """Returns fn(image_bytes, seed) -> (size, size, 3): uint8, or float32 normalised and
  erased with data.normalize_on='host'."""
  size = cfg.image_size
  policy = augment.parse_policy(cfg.randaugment) if cfg.randaugment else None
  hp = augment.Hparams(fill=tuple(min(255, round(255 * m)) for m in cfg.mean))
  jitter = cfg.color_jitter > 0 and (policy is None or cfg.force_color_jitter)
  on_host = _on_host(cfg)

  def fn(image_bytes, seed):
    s = tf.random.experimental.stateless_split(seed, 5)
    crop = lambda h, w: sample_crop(h, w, s[0], tuple(cfg.crop_scale), tuple(cfg.crop_ratio))
    image = _resize(_decode_crop(image_bytes, is_jpeg, crop), [size, size], cfg.interpolation)
    if cfg.hflip > 0:
      image = flip(image, s[1], cfg.hflip)
    if policy is not None:
      image = tf.cast(augment.rand_augment(tf.cast(image, tf.uint8), s[2], policy, hp), tf.float32)
    if jitter:
      image = color_jitter(image, s[3], cfg.color_jitter)
    if not on_host:  # PIL images stay uint8 through colour jitter too
      return tf.ensure_shape(_to_uint8(image), [size, size, 3])
    image = _normalize(image, cfg)
    if cfg.reprob > 0:
      image = random_erasing(image, s[4], cfg.reprob)
    return tf.ensure_shape(image, [size, size, 3])

  return fn


def eval_window(height, width, size, crop_pct):
  """The centre square that torchvision Resize(floor(size / crop_pct)) + CenterCrop(size)
  keeps, in the original image's pixels: int32 (top, left, side, side)."""
  short = tf.cast(tf.minimum(height, width), tf.float32)
  side = tf.cast(tf.round(short * size / math.floor(size / crop_pct)), tf.int32)
  side = tf.clip_by_value(side, 1, tf.minimum(height, width))
  return (height - side) // 2, (width - side) // 2, side, side


def eval_transform(cfg, is_jpeg):
  """Returns fn(image_bytes) -> (size, size, 3): the centre crop of timm's eval transform
  (resize the shorter side to floor(size / crop_pct), centre crop size); uint8, or float32
  normalised with data.normalize_on='host'.

  Only the kept window is decoded (JPEG) and resized, straight to size x size: the
  same scale as resizing the whole image first, without decoding or resampling the
  pixels the crop throws away.
  """
  size = cfg.image_size
  on_host = _on_host(cfg)
  window = lambda h, w: eval_window(h, w, size, cfg.crop_pct)  # noqa: E731

  def fn(image_bytes):
    image = _resize(_decode_crop(image_bytes, is_jpeg, window), [size, size], cfg.interpolation)
    image = _normalize(image, cfg) if on_host else tf.cast(image, tf.uint8)  # already rounded
    return tf.ensure_shape(image, [size, size, 3])

  return fn
