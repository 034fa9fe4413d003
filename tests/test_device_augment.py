"""On-device normalisation and random erasing (data/device_augment.py), against the
host pipeline's normalisation and timm's `RandomErasing(mode='pixel')` statistics."""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from stvit_jax.data import defaults
from stvit_jax.data import device_augment
from stvit_jax.data import preprocess

H, W = 24, 40  # not square: a box that fits one side may not fit the other


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision / timm IMAGENET_DEFAULT_MEAN, in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)


def test_normalize_gives_the_known_imagenet_values():
  """Pixel p of channel c -> (p / 255 - mean_c) / std_c with the published constants,
  written here as numbers (pixel 0 -> -0.485 / 0.229 = -2.1179 in red), on the device
  and on the host; the defaults' constants are not reused to make the expectation."""
  cfg = defaults.data_config()
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  expected = ((np.arange(256, dtype=np.float64)[:, None] / 255 - np.array(IMAGENET_MEAN))
              / np.array(IMAGENET_STD)).reshape(1, 16, 16, 3)
  np.testing.assert_allclose(expected[0, 0, 0], [-2.117904, -2.035714, -1.804444], atol=1e-6)
  np.testing.assert_allclose(expected[0, -1, -1], [2.248908, 2.428571, 2.64], atol=1e-6)
  host = preprocess._normalize(tf.constant(x, tf.float32), cfg).numpy()
  device = np.asarray(jax.jit(device_augment.normalize, static_argnums=(1, 2))(
      x, cfg.mean, cfg.std))
  assert device.dtype == np.float32
  np.testing.assert_allclose(device, expected, rtol=0, atol=2e-6)
  np.testing.assert_allclose(host, expected, rtol=0, atol=2e-6)


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))
import make_erasing_fixture  # noqa: E402  the fixture's writer: how timm's boxes were drawn

FIXTURE = Path(__file__).parent / 'fixtures' / 'timm_random_erasing.npz'


def _timm():
  """timm's boxes and erased-value statistics, stored by scripts/make_erasing_fixture.py."""
  with np.load(FIXTURE) as f:
    return f['boxes'], float(f['value_mean']), float(f['value_std']), float(f['prob'])


def test_random_erasing_has_timms_distribution():
  timm, timm_mean, timm_std, prob = _timm()
  n, (h, w) = len(timm), (H, W)
  assert (make_erasing_fixture.H, make_erasing_fixture.W) == (h, w)
  ours_x = np.asarray(jax.jit(device_augment.random_erasing, static_argnums=2)(
      jax.random.key(0), jnp.zeros((n, H, W, 3)), prob))
  ours = make_erasing_fixture.boxes(ours_x)
  # how often a box is drawn (prob x the chance that one of 10 tries fits)
  assert abs(ours[:, 0].mean() - timm[:, 0].mean()) < 0.03
  assert abs(ours[:, 0].mean() - prob) < 0.03
  a, b = ours[ours[:, 0] == 1], timm[timm[:, 0] == 1]
  for col, name in enumerate(('h', 'w', 'top', 'left'), start=1):
    result = stats.ks_2samp(a[:, col], b[:, col])
    assert result.pvalue > 1e-3, (name, result, a[:, col].mean(), b[:, col].mean())
  area = stats.ks_2samp(a[:, 1] * a[:, 2], b[:, 1] * b[:, 2])
  assert area.pvalue > 1e-3, area
  # Whole boxes at uniform positions, as timm's randint(0, H - h): a box of height h
  # touches the bottom edge with probability 1 / (H - h + 1). A box drawn anywhere and
  # clipped by the border would touch it far more often (and be smaller).
  for size_col, pos_col, side in ((1, 3, H), (2, 4, W)):
    p_edge = 1.0 / (side - a[:, size_col] + 1)
    touching = (a[:, pos_col] + a[:, size_col] == side).sum()
    assert abs(touching - p_edge.sum()) < 4 * np.sqrt((p_edge * (1 - p_edge)).sum()) + 1, (
        side, touching, p_edge.sum())
  # pixel mode: independent N(0, 1) per pixel and channel inside the box
  values = ours_x[ours_x != 0]
  assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
  assert abs(timm_mean) < 0.01 and abs(timm_std - values.std()) < 0.02


def test_the_stored_boxes_are_what_timm_draws():
  """Where torch and timm are installed: a fresh draw equals the committed fixture."""
  pytest.importorskip('torch')
  import torchvision_stub  # timm imports torchvision; its transforms are not used here
  torchvision_stub.install()
  pytest.importorskip('timm', reason='timm: pip install timm==1.0.31 --no-deps '
                      '(scripts/torchvision_stub.py)')
  boxes, values = make_erasing_fixture.timm_draw()
  stored, mean, std, _ = _timm()
  np.testing.assert_array_equal(boxes, stored)
  assert values.mean() == pytest.approx(mean) and values.std() == pytest.approx(std)


def test_random_erasing_is_a_function_of_the_key():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, H, W, 3)), jnp.float32)
  a = device_augment.random_erasing(jax.random.key(1), x, 1.0)
  np.testing.assert_array_equal(a, device_augment.random_erasing(jax.random.key(1), x, 1.0))
  assert not np.array_equal(a, device_augment.random_erasing(jax.random.key(2), x, 1.0))
  np.testing.assert_array_equal(device_augment.random_erasing(jax.random.key(1), x, 0.0), x)
  changed = np.any(np.asarray(a) != np.asarray(x), axis=(1, 2, 3))
  assert changed.sum() >= 7  # prob 1: every image with a fitting try


def test_train_and_eval_images_follow_normalize_on():
  cfg = defaults.data_config()
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, H, W, 3)), jnp.uint8)
  key = jax.random.key(0)
  erased = device_augment.train_images(key, images, cfg)
  normalised = device_augment.eval_images(images, cfg)
  assert erased.dtype == normalised.dtype == jnp.float32
  np.testing.assert_array_equal(
      erased, device_augment.random_erasing(key, normalised, cfg.reprob))
  assert device_augment.image_dtype(cfg) == jnp.uint8
  floats = normalised + 0.5  # a float batch counts as normalised: only erased
  np.testing.assert_array_equal(device_augment.eval_images(floats, cfg), floats)
  np.testing.assert_array_equal(device_augment.train_images(key, floats, cfg),
                                device_augment.random_erasing(key, floats, cfg.reprob))
  cfg.normalize_on = 'host'  # the tf.data pipeline already did both: pass through
  floats = images.astype(jnp.float32)
  assert device_augment.train_images(key, floats, cfg) is floats
  assert device_augment.eval_images(floats, cfg) is floats
  assert device_augment.image_dtype(cfg) == jnp.float32
  old = ml_collections.ConfigDict({k: v for k, v in cfg.items() if k != 'normalize_on'})
  assert device_augment.normalize_on(old) == 'device'
