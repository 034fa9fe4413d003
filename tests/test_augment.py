"""TF RandAugment ops (timm set), the policy parser, and the per-example transforms."""
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from stvit_jax.data import augment
from stvit_jax.data import preprocess

HP = augment.Hparams(fill=(124, 116, 104))
SIGNED = {'Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel', 'ColorIncreasing',
          'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing'}
# ops whose timm level map gives the identity at magnitude 0
IDENTITY_AT_0 = {'Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel',
                 'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
                 'BrightnessIncreasing', 'SharpnessIncreasing'}


def _image(h=24, w=20, seed=0):
  """A smooth, low-contrast colour image (values 40..200), so every op changes it."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w]
  base = 120 + 50 * np.sin(x / 3.0 + rng.uniform(0, 6, (3, 1, 1))) * np.cos(y / 4.0)
  return np.clip(base + rng.normal(0, 15, (3, h, w)), 40, 200).astype(np.uint8).transpose(1, 2, 0)


def _run(name, image, level, seed):
  out = augment.OPS[name](tf.constant(image), tf.constant(level, tf.float32),
                          tf.constant(seed, tf.int64), HP)
  return out.numpy()


def test_op_table_is_timm_set():
  assert set(augment.RAND_TRANSFORMS) | set(augment.RAND_INCREASING_TRANSFORMS) == set(augment.OPS)
  assert len(augment.RAND_INCREASING_TRANSFORMS) == 15


@pytest.mark.parametrize('name', sorted(augment.OPS))
def test_op_shape_dtype_range_determinism(name):
  image = _image()
  level = 5.0 if name == 'Solarize' else 9.0  # plain Solarize weakens as the level grows
  out = _run(name, image, level, [1, 2])
  assert out.shape == image.shape and out.dtype == np.uint8
  assert 0 <= out.min() and out.max() <= 255
  np.testing.assert_array_equal(out, _run(name, image, level, [1, 2]))
  assert not np.array_equal(out, image), f'magnitude {level} should change the image'
  if name in SIGNED:  # the random sign comes from the seed
    outs = {_run(name, image, 9.0, [s, 0]).tobytes() for s in range(6)}
    assert len(outs) == 2
  # the op also works traced, as in tf.data, on another size
  fn = tf.function(lambda x, s: augment.OPS[name](x, tf.constant(5.0), s, HP))
  assert fn(tf.constant(_image(17, 31)), tf.constant([0, 0], tf.int64)).shape == (17, 31, 3)
  if name in IDENTITY_AT_0:
    np.testing.assert_array_equal(_run(name, image, 0.0, [3, 4]), image)


def _sign(seed):
  return float(augment._negate(tf.constant(1.0), tf.constant(seed, tf.int64)))


LEVEL = 7.0
# PIL / timm references for the pixel ops, given the level (and seed for signed ops).
PIL_REF = {
    'AutoContrast': lambda im, s: ImageOps.autocontrast(im),
    'Equalize': lambda im, s: ImageOps.equalize(im),
    'Invert': lambda im, s: ImageOps.invert(im),
    'Posterize': lambda im, s: ImageOps.posterize(im, int(LEVEL / 10 * 4)),
    'PosterizeIncreasing': lambda im, s: ImageOps.posterize(im, 4 - int(LEVEL / 10 * 4)),
    'Solarize': lambda im, s: ImageOps.solarize(im, int(LEVEL / 10 * 256)),
    'SolarizeIncreasing': lambda im, s: ImageOps.solarize(im, 256 - int(LEVEL / 10 * 256)),
    'Color': lambda im, s: ImageEnhance.Color(im).enhance(LEVEL / 10 * 1.8 + 0.1),
    'Contrast': lambda im, s: ImageEnhance.Contrast(im).enhance(LEVEL / 10 * 1.8 + 0.1),
    'Brightness': lambda im, s: ImageEnhance.Brightness(im).enhance(LEVEL / 10 * 1.8 + 0.1),
    'Sharpness': lambda im, s: ImageEnhance.Sharpness(im).enhance(LEVEL / 10 * 1.8 + 0.1),
    'ColorIncreasing': lambda im, s: ImageEnhance.Color(im).enhance(1 + s * LEVEL / 10 * 0.9),
    'BrightnessIncreasing':
        lambda im, s: ImageEnhance.Brightness(im).enhance(1 + s * LEVEL / 10 * 0.9),
}


@pytest.mark.parametrize('name', sorted(PIL_REF))
def test_pixel_ops_match_pil(name):
  image = _image(seed=5)
  seed = [7, 1]
  ref = np.asarray(PIL_REF[name](Image.fromarray(image), _sign(seed))).astype(int)
  out = _run(name, image, LEVEL, seed).astype(int)
  assert np.abs(out - ref).max() <= 1, name


def test_solarize_add_matches_timm():
  image = _image(seed=2)
  add = int(LEVEL / 10 * 110)
  ref = np.where(image < 128, np.minimum(image.astype(int) + add, 255), image)
  np.testing.assert_array_equal(_run('SolarizeAdd', image, LEVEL, [0, 0]), ref)


@pytest.mark.parametrize('name', ['Rotate', 'ShearX', 'TranslateXRel'])
def test_geometric_ops_follow_pil_direction_and_fill(name):
  image = _image(32, 32, seed=3)
  seed = [2, 9]
  sign = _sign(seed)
  pil = Image.fromarray(image)
  if name == 'Rotate':
    ref = pil.rotate(sign * LEVEL / 10 * 30, resample=Image.BICUBIC, fillcolor=HP.fill)
  elif name == 'ShearX':
    f = sign * LEVEL / 10 * 0.3
    ref = pil.transform(pil.size, Image.AFFINE, (1, f, 0, 0, 1, 0), Image.BICUBIC,
                        fillcolor=HP.fill)
  else:
    dx = sign * LEVEL / 10 * HP.translate_pct * 32
    ref = pil.transform(pil.size, Image.AFFINE, (1, 0, dx, 0, 1, 0), Image.BICUBIC,
                        fillcolor=HP.fill)
  out = _run(name, image, LEVEL, seed).astype(float)
  ref = np.asarray(ref).astype(float)
  assert np.mean(np.abs(out - ref)) <= 2  # PIL's geometry, pixel centres and bicubic


def test_parse_policy_deit_string():
  p = augment.parse_policy('rand-m9-mstd0.5-inc1')
  assert (p.num_layers, p.magnitude, p.magnitude_std, p.magnitude_max, p.prob) == (
      2, 9.0, 0.5, 10.0, 0.5)
  assert p.ops == augment.RAND_INCREASING_TRANSFORMS
  p = augment.parse_policy('rand-n3-m12-mmax15-mstd101-p0.7')
  assert (p.num_layers, p.magnitude, p.magnitude_max, p.prob) == (3, 12.0, 15.0, 0.7)
  assert p.magnitude_std == math.inf and p.ops == augment.RAND_TRANSFORMS
  assert augment.parse_policy('rand-m9-inc0').ops == augment.RAND_TRANSFORMS


@pytest.mark.parametrize('spec,match', [
    ('auto-m9', 'rand-<field>'),
    ('', 'rand-<field>'),
    ('rand-m9-x3', "unknown field 'x3'.*mstd"),
    ('rand-m9-mstd', "unknown field 'mstd'"),
    ('rand-w0', "unknown field 'w0'.*inc"),
    ('rand-m9.5', 'integer'),
    ('rand-inc2', 'inc0 or inc1'),
    ('rand-p1.5', 'probability'),
])
def test_parse_policy_errors_name_valid_fields(spec, match):
  with pytest.raises(ValueError, match=match):
    augment.parse_policy(spec)


def test_rand_augment_deterministic_and_seed_dependent():
  image = tf.constant(_image(32, 32))
  policy = augment.parse_policy('rand-m9-mstd0.5-inc1')
  fn = tf.function(lambda s: augment.rand_augment(image, s, policy, HP))
  outs = [fn(tf.constant([i, 0], tf.int64)).numpy() for i in range(6)]
  assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
  np.testing.assert_array_equal(outs[0], fn(tf.constant([0, 0], tf.int64)).numpy())
  assert len({o.tobytes() for o in outs}) > 3
  never = augment.rand_augment(image, tf.constant([0, 0], tf.int64),
                               augment.parse_policy('rand-m9-p0'), HP)
  np.testing.assert_array_equal(never.numpy(), image.numpy())


def test_inception_crop_is_valid_and_covers_scale():
  areas = []
  for i in range(40):
    top, left, h, w = (int(v) for v in preprocess.sample_crop(
        60, 90, tf.constant([i, 1], tf.int64)))
    assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 90 and h > 0 and w > 0
    assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1
    areas.append(h * w / (60 * 90))
  assert min(areas) >= 0.07 and max(areas) <= 1.0 and np.std(areas) > 0.1
  # no try fits a 100:1 strip at ratio 3/4..4/3 -> centre crop trimmed to ratio 4/3
  assert [int(v) for v in preprocess.sample_crop(3, 300, tf.constant([0, 0], tf.int64),
                                                 scale=(0.9, 1.0))] == [0, 148, 3, 4]


def test_random_erasing_and_color_jitter():
  x = tf.zeros([32, 32, 3])
  seed = tf.constant([4, 2], tf.int64)
  erased = preprocess.random_erasing(x, seed, prob=1.0).numpy()
  box = np.any(erased != 0, axis=-1)
  rows, cols = np.where(box)
  frac = box.sum() / box.size
  assert 0.02 * 0.5 <= frac <= 1 / 3 * 1.3
  assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
  np.testing.assert_array_equal(erased, preprocess.random_erasing(x, seed, 1.0).numpy())
  assert not preprocess.random_erasing(x, seed, prob=0.0).numpy().any()
  image = tf.constant(_image(), tf.float32)
  jittered = preprocess.color_jitter(image, seed, 0.4).numpy()
  assert jittered.min() >= 0 and jittered.max() <= 255 and not np.allclose(jittered, image)
  np.testing.assert_array_equal(jittered, preprocess.color_jitter(image, seed, 0.4).numpy())
