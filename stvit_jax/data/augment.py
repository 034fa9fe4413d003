"""TF-native RandAugment with timm's op set, level maps and policy strings.

tensorflow_addons is unmaintained, so the ops are written here on core TF ops.
Each op follows PIL / timm (`timm.data.auto_augment`) on uint8 images:
`op(image uint8 (H, W, 3), level float32 in [0, 10], seed int (2,), hp) -> uint8`.
The level -> argument maps and the random sign flips are timm's; all randomness
is stateless and comes from `seed`, so an image's augmentation depends only on
its seed. The geometric ops sample as PIL's transform does (pixel centres, bicubic
a = -1, fill outside, edge-clamped taps) with gathers, since TF's projective
transform has no bicubic; tests/test_device_randaugment.py checks every op against
timm's PIL outputs.
"""
import dataclasses
import math
import re

import tensorflow as tf

LEVEL_MAX = 10.0  # timm _LEVEL_DENOM

# timm _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS, in timm's order.
RAND_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
    'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX',
    'ShearY', 'TranslateXRel', 'TranslateYRel')
RAND_INCREASING_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
    'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
    'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
    'TranslateXRel', 'TranslateYRel')


@dataclasses.dataclass(frozen=True)
class Hparams:
  fill: tuple = (128, 128, 128)   # timm: img_mean in 0..255
  translate_pct: float = 0.45     # timm default for TranslateXRel / TranslateYRel
  interpolation: str = 'bicubic'  # geometric ops, one of INTERPOLATIONS; timm passes DeiT's
                                  # pipeline interpolation (bicubic) to Rotate / Shear / Translate


INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest')


# ---------------------------------------------------------------- helpers


def _u8(x):
  """float -> uint8 with PIL's clip-and-truncate."""
  return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


def _f32(image):
  return tf.cast(image, tf.float32)


def _negate(value, seed):
  """timm _randomly_negate: flip the sign with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.where(flip, -value, value)


def _gray(image):
  """PIL convert('L'): (R*19595 + G*38470 + B*7471 + 2**15) >> 16, as int32 (H, W, 1)."""
  x = tf.cast(image, tf.int32)
  g = x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 32768
  return tf.bitwise.right_shift(g, 16)[..., None]


def _blend(degenerate, image, factor):
  """PIL ImageEnhance: degenerate + factor * (image - degenerate)."""
  d = _f32(degenerate)
  return _u8(d + factor * (_f32(image) - d))


def _lut(image, table):
  """Per-channel lookup table: table int32 (3, 256)."""
  x = tf.cast(image, tf.int32)
  idx = x + tf.range(3, dtype=tf.int32) * 256
  return tf.cast(tf.gather(tf.reshape(table, [-1]), idx), tf.uint8)


def _cubic(t, a=-1.0):
  """Keys' cubic kernel; PIL's transforms use a = -1 (Geometry.c), its resize a = -0.5."""
  t = tf.abs(t)
  near = ((a + 2) * t - (a + 3)) * t * t + 1
  far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return tf.where(t <= 1, near, tf.where(t < 2, far, tf.zeros_like(t)))


def _taps(s, interpolation):
  """[(integer tap, weight)] along one axis for positions s (pixel centres at integers)."""
  if interpolation == 'nearest':
    return [(tf.floor(s + 0.5), tf.ones_like(s))]
  base = tf.floor(s)
  d = s - base
  if interpolation == 'bilinear':
    return [(base, 1 - d), (base + 1, d)]
  return [(base + k, _cubic(d - k)) for k in (-1.0, 0.0, 1.0, 2.0)]


def _affine(image, m, hp):
  """PIL Image.transform(AFFINE, m, resample, fillcolor=hp.fill): output pixel (x, y) reads
  the input at (m0 x' + m1 y' + m2, m3 x' + m4 y' + m5), x' = x + 0.5, y' = y + 0.5; points
  outside the image take the fill, inside ones interpolate edge-clamped taps (Geometry.c).

  Sampled here with gathers, as TF's projective transform has no bicubic and puts pixel
  centres half a pixel from PIL's; same code as data/device_warp.py.
  """
  if hp.interpolation not in INTERPOLATIONS:
    raise ValueError(f'Hparams.interpolation={hp.interpolation!r}: valid values are '
                     f'{INTERPOLATIONS}')
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  ys, xs = tf.meshgrid(tf.range(tf.cast(h, tf.float32)) + 0.5,
                       tf.range(tf.cast(w, tf.float32)) + 0.5, indexing='ij')
  m = [tf.cast(v, tf.float32) for v in m]
  x_in = m[0] * xs + m[1] * ys + m[2]
  y_in = m[3] * xs + m[4] * ys + m[5]
  inside = ((x_in >= 0) & (x_in < tf.cast(w, tf.float32))
            & (y_in >= 0) & (y_in < tf.cast(h, tf.float32)))
  flat = tf.reshape(_f32(image), [-1, 3])
  out = tf.zeros([h, w, 3])
  for row, wy in _taps(y_in - 0.5, hp.interpolation):
    row = tf.clip_by_value(tf.cast(row, tf.int32), 0, h - 1) * w
    for col, wx in _taps(x_in - 0.5, hp.interpolation):
      idx = row + tf.clip_by_value(tf.cast(col, tf.int32), 0, w - 1)
      out += (wy * wx)[..., None] * tf.gather(flat, idx)
  out = _u8(tf.floor(out))  # PIL clips and truncates the interpolated value
  return tf.where(inside[..., None], out, tf.constant(hp.fill, tf.uint8))


# ---------------------------------------------------------------- pixel ops


def auto_contrast(image, level, seed, hp):
  del level, seed, hp
  x = _f32(image)
  lo = tf.reduce_min(x, axis=[0, 1])
  hi = tf.reduce_max(x, axis=[0, 1])
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(hi > lo, -lo * scale, 0.0)
  return _u8(tf.floor(x * scale + offset))


def equalize(image, level, seed, hp):
  """PIL ImageOps.equalize, per channel."""
  del level, seed, hp
  x = tf.cast(image, tf.int32)
  tables = []
  for c in range(3):
    hist = tf.math.bincount(x[..., c], minlength=256, maxlength=256, dtype=tf.int32)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe = tf.maximum(step, 1)
    lut = (safe // 2 + tf.cumsum(hist, exclusive=True)) // safe
    tables.append(tf.where(step > 0, tf.minimum(lut, 255), tf.range(256)))
  return _lut(image, tf.stack(tables))


def invert(image, level, seed, hp):
  del level, seed, hp
  return 255 - image


def _posterize(image, bits):
  shift = tf.cast(8 - tf.clip_by_value(bits, 0, 8), tf.int32)
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(x, shift), shift), tf.uint8)


def posterize(image, level, seed, hp):
  del seed, hp
  return _posterize(image, tf.cast(level / LEVEL_MAX * 4, tf.int32))  # keep 0..4 bits


def posterize_increasing(image, level, seed, hp):
  del seed, hp
  return _posterize(image, 4 - tf.cast(level / LEVEL_MAX * 4, tf.int32))  # keep 4..0 bits


def _solarize(image, threshold):
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.where(x >= threshold, 255 - x, x), tf.uint8)


def solarize(image, level, seed, hp):
  del seed, hp
  return _solarize(image, tf.cast(level / LEVEL_MAX * 256, tf.int32))


def solarize_increasing(image, level, seed, hp):
  del seed, hp
  return _solarize(image, 256 - tf.cast(level / LEVEL_MAX * 256, tf.int32))


def solarize_add(image, level, seed, hp):
  del seed, hp
  add = tf.cast(level / LEVEL_MAX * 110, tf.int32)
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.where(x < 128, tf.minimum(x + add, 255), x), tf.uint8)


# ---------------------------------------------------------------- ImageEnhance ops


def _enhance_factor(level):  # timm _enhance_level_to_arg: [0.1, 1.9]
  return level / LEVEL_MAX * 1.8 + 0.1


def _enhance_increasing_factor(level, seed):  # 1 +- [0, 0.9], at least 0.1
  return tf.maximum(0.1, 1.0 + _negate(level / LEVEL_MAX * 0.9, seed))


def _color(image, f):
  return _blend(tf.repeat(_gray(image), 3, axis=-1), image, f)


def _contrast(image, f):
  mean = tf.floor(tf.reduce_mean(_f32(_gray(image))) + 0.5)  # PIL: int(mean + 0.5)
  return _blend(tf.fill(tf.shape(image), mean), image, f)


def _brightness(image, f):
  return _blend(tf.zeros_like(image), image, f)


def _sharpness(image, f):
  """PIL ImageFilter.SMOOTH ([[1,1,1],[1,5,1],[1,1,1]] / 13), border pixels unchanged."""
  # Sums of shifted slices: exact on integers, and ~4x cheaper on CPU than a depthwise conv.
  x = _f32(image)
  rows = x[:-2] + x[1:-1] + x[2:]                      # vertical 3-sums
  box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]     # 3x3 sums
  smooth = tf.round((box + 4.0 * x[1:-1, 1:-1]) / 13.0)
  degenerate = tf.concat([x[:1], tf.concat([x[1:-1, :1], smooth, x[1:-1, -1:]], 1), x[-1:]], 0)
  return _blend(degenerate, image, f)


def _enhance(fn, increasing):
  def op(image, level, seed, hp):
    del hp
    f = _enhance_increasing_factor(level, seed) if increasing else _enhance_factor(level)
    return fn(image, f)
  return op


# ---------------------------------------------------------------- geometric ops


def rotate(image, level, seed, hp):
  """PIL Image.rotate about the centre; positive angles turn counter-clockwise."""
  theta = _negate(level / LEVEL_MAX * 30.0, seed) * (math.pi / 180.0)
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  cx, cy = tf.cast(w, tf.float32) / 2, tf.cast(h, tf.float32) / 2  # PIL: about (W / 2, H / 2)
  c, s = tf.cos(theta), tf.sin(theta)
  return _affine(image, [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy], hp)


def shear_x(image, level, seed, hp):
  f = _negate(level / LEVEL_MAX * 0.3, seed)
  return _affine(image, [1.0, f, 0.0, 0.0, 1.0, 0.0], hp)


def shear_y(image, level, seed, hp):
  f = _negate(level / LEVEL_MAX * 0.3, seed)
  return _affine(image, [1.0, 0.0, 0.0, f, 1.0, 0.0], hp)


def translate_x_rel(image, level, seed, hp):
  pct = _negate(level / LEVEL_MAX * hp.translate_pct, seed)
  dx = pct * tf.cast(tf.shape(image)[1], tf.float32)
  return _affine(image, [1.0, 0.0, dx, 0.0, 1.0, 0.0], hp)


def translate_y_rel(image, level, seed, hp):
  pct = _negate(level / LEVEL_MAX * hp.translate_pct, seed)
  dy = pct * tf.cast(tf.shape(image)[0], tf.float32)
  return _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, dy], hp)


OPS = {
    'AutoContrast': auto_contrast,
    'Equalize': equalize,
    'Invert': invert,
    'Rotate': rotate,
    'Posterize': posterize,
    'PosterizeIncreasing': posterize_increasing,
    'Solarize': solarize,
    'SolarizeIncreasing': solarize_increasing,
    'SolarizeAdd': solarize_add,
    'Color': _enhance(_color, False),
    'ColorIncreasing': _enhance(_color, True),
    'Contrast': _enhance(_contrast, False),
    'ContrastIncreasing': _enhance(_contrast, True),
    'Brightness': _enhance(_brightness, False),
    'BrightnessIncreasing': _enhance(_brightness, True),
    'Sharpness': _enhance(_sharpness, False),
    'SharpnessIncreasing': _enhance(_sharpness, True),
    'ShearX': shear_x,
    'ShearY': shear_y,
    'TranslateXRel': translate_x_rel,
    'TranslateYRel': translate_y_rel,
}


# ---------------------------------------------------------------- policy


@dataclasses.dataclass(frozen=True)
class Policy:
  """A parsed timm 'rand-...' string. magnitude_std inf = uniform in [0, magnitude]."""
  ops: tuple
  num_layers: int = 2
  magnitude: float = 10.0
  magnitude_std: float = 0.0
  magnitude_max: float = LEVEL_MAX
  prob: float = 0.5


_FIELDS = {
    'm': 'magnitude (int, 0..mmax)', 'n': 'num_layers (int)', 'mstd': 'magnitude std (float)',
    'mmax': 'magnitude upper bound (int, default 10)', 'inc': 'increasing ops (0|1)',
    'p': 'per-op probability (float, default 0.5)'}


def parse_policy(spec):
  """Parses timm RandAugment strings such as 'rand-m9-mstd0.5-inc1'."""
  valid = ', '.join(f'{k}<{v}>' for k, v in _FIELDS.items())
  parts = spec.split('-') if isinstance(spec, str) else []
  if not parts or parts[0] != 'rand':
    raise ValueError(f'randaugment={spec!r}: expected a string "rand-<field><value>-..." '
                     f'with fields {valid}, e.g. "rand-m9-mstd0.5-inc1"; "" disables it')
  kw, increasing = {}, False
  for part in parts[1:]:
    match = re.fullmatch(r'([a-z]+)(\d+(?:\.\d*)?)', part)
    key = match and match.group(1)
    if key not in _FIELDS:
      raise ValueError(f'randaugment={spec!r}: unknown field {part!r}; valid fields: {valid}')
    value = float(match.group(2))
    if key in ('m', 'n', 'mmax', 'inc') and value != int(value):
      raise ValueError(f'randaugment={spec!r}: {part!r} needs an integer ({_FIELDS[key]})')
    if key == 'inc':
      if value not in (0, 1):
        raise ValueError(f'randaugment={spec!r}: {part!r} must be inc0 or inc1')
      increasing = bool(value)  # timm reads bool('0') as True; inc0 means off here
    elif key == 'mstd':
      kw['magnitude_std'] = math.inf if value > 100 else value  # timm: >100 = uniform
    elif key == 'p':
      if not 0 <= value <= 1:
        raise ValueError(f'randaugment={spec!r}: {part!r} must be a probability in [0, 1]')
      kw['prob'] = value
    else:
      kw[{'m': 'magnitude', 'n': 'num_layers', 'mmax': 'magnitude_max'}[key]] = (
          int(value) if key == 'n' else value)
  ops = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
  return Policy(ops=ops, **kw)


def _sample_level(policy, seed):
  m = policy.magnitude
  if policy.magnitude_std == math.inf:
    m = tf.random.stateless_uniform([], seed, 0.0, m)
  elif policy.magnitude_std > 0:
    m = m + policy.magnitude_std * tf.random.stateless_normal([], seed)
  return tf.clip_by_value(tf.cast(m, tf.float32), 0.0, policy.magnitude_max)


def rand_augment(image, seed, policy, hp=Hparams()):
  """timm RandAugment: num_layers ops drawn with replacement, each applied with policy.prob."""
  if isinstance(policy, str):
    policy = parse_policy(policy)
  fns = [OPS[name] for name in policy.ops]
  seeds = tf.random.experimental.stateless_split(seed, policy.num_layers * 4)
  for i in range(policy.num_layers):
    s_op, s_prob, s_level, s_arg = tf.unstack(seeds[4 * i:4 * i + 4])
    idx = tf.random.stateless_uniform([], s_op, 0, len(fns), dtype=tf.int32)
    # Skipped ops select the extra identity branch.
    idx = tf.where(tf.random.stateless_uniform([], s_prob) < policy.prob, idx, len(fns))
    level = _sample_level(policy, s_level)
    branches = [lambda f=f, x=image: f(x, level, s_arg, hp) for f in fns]
    branches.append(lambda x=image: x)
    image = tf.ensure_shape(tf.switch_case(idx, branches), image.shape)
  return image
