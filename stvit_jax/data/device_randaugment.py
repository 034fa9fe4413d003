"""timm RandAugment on a uint8 batch, on device (pure jnp), instead of per image on the host.

`rand_augment(keys, images, policy, hp)` follows timm's `RandAugment` / `AugmentOp`
(timm.data.auto_augment) with the op set, level maps and policy of augment.py
(`augment.parse_policy('rand-m9-mstd0.5-inc1')`, `augment.Hparams`): per image,
`num_layers` ops drawn with replacement, each applied with probability p, its
magnitude N(m, mstd) clipped to [0, mmax] (uniform in [0, m] for mstd inf), random
sign flips, PIL's pixel results, the fill colour outside warped images.

Cost: each layer is one per-image LUT gather (AutoContrast, Equalize, Invert,
Posterize, Solarize, SolarizeAdd), one blend (Color, Contrast, Brightness,
Sharpness) and one bicubic affine warp (Rotate, Shear, Translate), each image taking
the identity in the two passes its op is not in; not every op on every image.
Equalize's histograms and AutoContrast's extremes are skipped (lax.cond) for a batch
where no image needs them; the blend and the warp run only on the images that need
them, gathered 16 at a time (device_warp.on_rows).

Benchmark: scripts/bench_device_randaugment.py; on 2 shared CPU cores a jitted (64, 224, 224, 3)
batch takes ~4.3 ms per image (its docstring has the figures).
"""
import math

import jax
import jax.numpy as jnp

from stvit_jax.data import device_color
from stvit_jax.data import device_warp

LEVEL_MAX = 10.0  # timm _LEVEL_DENOM
LUT_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Posterize', 'PosterizeIncreasing', 'Solarize',
           'SolarizeIncreasing', 'SolarizeAdd')
BLEND_OPS = {  # name -> (degenerate, increasing)
    'Color': (device_color.COLOR, False), 'ColorIncreasing': (device_color.COLOR, True),
    'Contrast': (device_color.CONTRAST, False), 'ContrastIncreasing': (device_color.CONTRAST, True),
    'Brightness': (device_color.BRIGHTNESS, False),
    'BrightnessIncreasing': (device_color.BRIGHTNESS, True),
    'Sharpness': (device_color.SHARPNESS, False),
    'SharpnessIncreasing': (device_color.SHARPNESS, True)}
WARP_OPS = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
OP_NAMES = LUT_OPS + tuple(BLEND_OPS) + WARP_OPS  # op ids index this; -1 is the identity


def op_ids(names):
  """Op names -> int32 ids into OP_NAMES; an unknown name is an error naming the valid ones."""
  unknown = [n for n in names if n not in OP_NAMES]
  if unknown:
    raise ValueError(f'policy.ops: unknown ops {unknown}; valid ops: {OP_NAMES}')
  return jnp.asarray([OP_NAMES.index(n) for n in names], jnp.int32)


# ---------------------------------------------------------------- sampling


def _sample_one(key, policy, ids):
  """One image's (op id or -1, level, sign) per layer, as timm draws them."""
  k_op, k_apply, k_level, k_sign = jax.random.split(key, 4)
  n = policy.num_layers
  op = ids[jax.random.randint(k_op, (n,), 0, len(ids))]        # with replacement
  op = jnp.where(jax.random.uniform(k_apply, (n,)) < policy.prob, op, -1)
  m = jnp.full((n,), policy.magnitude, jnp.float32)
  if policy.magnitude_std == math.inf:
    m = jax.random.uniform(k_level, (n,), maxval=policy.magnitude)
  elif policy.magnitude_std > 0:
    m = m + policy.magnitude_std * jax.random.normal(k_level, (n,))
  upper = policy.magnitude_max or LEVEL_MAX                       # timm: mmax or 10
  level = jnp.clip(m, 0.0, upper)
  sign = jnp.where(jax.random.uniform(k_sign, (n,)) < 0.5, 1.0, -1.0)  # timm _randomly_negate
  return op, level, sign


def sample(keys, policy):
  """Per image and layer: op id (-1 = skipped), level, sign; each (B, num_layers)."""
  ids = op_ids(policy.ops)
  return jax.vmap(lambda k: _sample_one(k, policy, ids))(keys)


# ---------------------------------------------------------------- one op per image


def _is(op, *names):
  return jnp.isin(op, jnp.asarray([OP_NAMES.index(n) for n in names]))


def _lut_pass(images, op, level):
  """The LUT ops of timm's level maps; every other image gets the identity table."""
  frac = level / LEVEL_MAX
  quarter = jnp.floor(frac * 4).astype(jnp.int32)                # int(level / 10 * 4)
  thresh = jnp.minimum(256, jnp.floor(frac * 256).astype(jnp.int32))
  add = jnp.minimum(128, jnp.floor(frac * 110).astype(jnp.int32))
  ident = jnp.broadcast_to(device_color.IDENTITY_LUT, (images.shape[0], 256))
  lut = ident
  for names, table in ((('Posterize',), device_color.posterize_lut(quarter)),
                       (('PosterizeIncreasing',), device_color.posterize_lut(4 - quarter)),
                       (('Solarize',), device_color.solarize_lut(thresh)),
                       (('SolarizeIncreasing',), device_color.solarize_lut(256 - thresh)),
                       (('SolarizeAdd',), device_color.solarize_add_lut(add)),
                       (('Invert',), 255 - ident)):
    lut = jnp.where(_is(op, *names)[:, None], table, lut)
  lut = jnp.broadcast_to(lut[:, None], (images.shape[0], 3, 256))
  # AutoContrast needs each image's min / max, Equalize its histograms: only if drawn.
  auto, equal = _is(op, 'AutoContrast')[:, None, None], _is(op, 'Equalize')[:, None, None]
  lut = jax.lax.cond(jnp.any(auto), lambda t: jnp.where(
      auto, device_color.autocontrast_lut(images), t), lambda t: t, lut)
  lut = jax.lax.cond(jnp.any(equal), lambda t: jnp.where(
      equal, device_color.equalize_lut(device_color.histograms(images)), t), lambda t: t, lut)
  any_lut = _is(op, *LUT_OPS)
  return jax.lax.cond(jnp.any(any_lut), lambda x: device_color.apply_lut(x, lut),
                      lambda x: x, images)


def _blend_pass(images, op, level, sign):
  """ImageEnhance ops: timm's factor lv * 1.8 + 0.1, or max(0.1, 1 +- lv * 0.9) increasing."""
  frac = level / LEVEL_MAX
  factor = jnp.ones_like(level)
  kind = jnp.zeros(op.shape, jnp.int32)
  for name, (degenerate, increasing) in BLEND_OPS.items():
    f = jnp.maximum(0.1, 1.0 + sign * frac * 0.9) if increasing else frac * 1.8 + 0.1
    hit = _is(op, name)
    factor = jnp.where(hit, f, factor)
    kind = jnp.where(hit, degenerate, kind)
  return device_warp.on_rows(device_color.blend, _is(op, *BLEND_OPS), images, kind, factor)


def affine_matrix(op, level, sign, height, width, translate_pct):
  """PIL's (a, b, c, d, e, f) per image (B, 6) for timm's geometric ops; identity otherwise."""
  frac = level / LEVEL_MAX
  # Rotate: PIL Image.rotate(deg) about (W / 2, H / 2), counter-clockwise for deg > 0.
  theta = -jnp.deg2rad(sign * frac * 30.0)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = width / 2.0, height / 2.0
  rot = jnp.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy], -1)
  shear = sign * frac * 0.3
  shift = sign * frac * translate_pct
  one, zero = jnp.ones_like(level), jnp.zeros_like(level)
  cases = {
      'Rotate': rot,
      'ShearX': jnp.stack([one, shear, zero, zero, one, zero], -1),
      'ShearY': jnp.stack([one, zero, zero, shear, one, zero], -1),
      'TranslateXRel': jnp.stack([one, zero, shift * width, zero, one, zero], -1),
      'TranslateYRel': jnp.stack([one, zero, zero, zero, one, shift * height], -1)}
  m = jnp.stack([one, zero, zero, zero, one, zero], -1)
  for name, case in cases.items():
    m = jnp.where(_is(op, name)[:, None], case, m)
  return m


def apply_ops(images, op, level, sign, hp):
  """One op per image: op (B,) ids into OP_NAMES (-1: unchanged), level (B,) in [0, mmax],
  sign (B,) +-1 for the signed ops; uint8 (B, H, W, 3) -> uint8, quantised as PIL does."""
  op = jnp.asarray(op, jnp.int32)
  level = jnp.asarray(level, jnp.float32)
  sign = jnp.asarray(sign, jnp.float32)
  images = _lut_pass(images, op, level)
  images = _blend_pass(images, op, level, sign)
  _, h, w, _ = images.shape
  matrix = affine_matrix(op, level, sign, h, w, hp.translate_pct)
  return device_warp.warp_where(images, matrix, _is(op, *WARP_OPS), hp.fill, hp.interpolation)


def rand_augment(keys, images, policy, hp):
  """timm RandAugment per image: keys (B,) PRNG keys (an image's result depends only on its
  key), images uint8 (B, H, W, 3) -> uint8; policy `augment.Policy`, hp `augment.Hparams`
  (fill = the dataset mean colour, translate_pct, interpolation 'bicubic' as DeiT's).
  Jit it with policy and hp static (both are frozen dataclasses). With a batch sharded over
  devices, call it per shard (shard_map): the row gathers of device_warp.on_rows on a
  global batch would move images between devices."""
  if images.dtype != jnp.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images: expected uint8 (B, H, W, 3), got {images.dtype} {images.shape}')
  op, level, sign = sample(keys, policy)
  for i in range(policy.num_layers):
    images = apply_ops(images, op[:, i], level[:, i], sign[:, i], hp)
  return images


def color_jitter(keys, images, strength):
  """torchvision ColorJitter(b=c=s=strength) per image; see device_color.color_jitter."""
  return device_color.color_jitter(keys, images, strength)
