"""On-device Mixup / CutMix / label smoothing (timm Mixup, mode='batch')."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stvit_jax.data import defaults
from stvit_jax.data import mixup

N, B, H, W = 10, 6, 16, 12


def _cfg(**kw):
  c = defaults.mixup_config()
  c.update(kw)
  return c


def _batch():
  # image i is the constant i + 1, so every output pixel says where it came from
  images = jnp.broadcast_to(jnp.arange(1.0, B + 1)[:, None, None, None], (B, H, W, 3))
  labels = jnp.arange(B, dtype=jnp.int32) % N
  return images, labels


def test_soft_targets_label_smoothing_values_exact():
  t = np.asarray(mixup.soft_targets(jnp.array([3, 0]), N, 0.1))
  assert t.dtype == np.float32
  np.testing.assert_allclose(t[0, 3], 1 - 0.1 + 0.1 / N, rtol=0, atol=1e-7)
  np.testing.assert_allclose(np.delete(t[0], 3), 0.1 / N, rtol=0, atol=1e-8)
  np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(mixup.soft_targets(jnp.array([2]), N, 0.0)[0], np.eye(N)[2])


def test_defaults_are_paper_recipe():
  c = defaults.mixup_config()
  assert (c.mixup_alpha, c.cutmix_alpha, c.prob, c.switch_prob, c.label_smoothing) == (
      0.8, 1.0, 1.0, 0.5, 0.1)


def _lam_from_targets(targets, labels):
  """targets[0] = lam * y0 + (1 - lam) * y_{B-1}, smoothed: recover lam."""
  s = 0.1
  on = 1 - s + s / N
  t = np.asarray(targets)
  return (t[0, labels[0]] - s / N) / (on - s / N)


@pytest.mark.parametrize('seed', range(4))
def test_mixup_only_blends_with_reversed_batch(seed):
  images, labels = _batch()
  out, targets = mixup.mixup_cutmix(jax.random.key(seed), images, labels, num_classes=N,
                                    cfg=_cfg(cutmix_alpha=0.0))
  np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, atol=1e-6)
  lam = _lam_from_targets(targets, np.asarray(labels))
  assert 0 < lam < 1
  expected = lam * images + (1 - lam) * images[::-1]
  np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize('seed', range(6))
def test_cutmix_box_area_matches_corrected_lambda(seed):
  images, labels = _batch()
  out, targets = mixup.mixup_cutmix(jax.random.key(seed), images, labels, num_classes=N,
                                    cfg=_cfg(mixup_alpha=0.0))
  np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, atol=1e-6)
  out = np.asarray(out)
  own = out[0, ..., 0] == 1.0
  pasted = out[0, ..., 0] == float(B)  # from the last image (reversed batch)
  assert (own | pasted).all()  # pixels are copied, never blended
  lam = _lam_from_targets(targets, np.asarray(labels))
  np.testing.assert_allclose(pasted.mean(), 1 - lam, atol=1e-6)
  if pasted.any():  # one axis-aligned box
    rows, cols = np.where(pasted)
    assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
  for i in range(B):  # same box for every image of the batch
    np.testing.assert_array_equal(out[i, ..., 0] == float(B - i), pasted)


def test_both_modes_switch_and_prob_zero_is_identity():
  images, labels = _batch()
  modes = set()
  for seed in range(16):
    out, _ = mixup.mixup_cutmix(jax.random.key(seed), images, labels, num_classes=N,
                                cfg=_cfg())
    copied = np.isin(np.asarray(out[0, ..., 0]), [1.0, float(B)]).all()
    modes.add('cutmix' if copied else 'mixup')
  assert modes == {'cutmix', 'mixup'}
  out, targets = mixup.mixup_cutmix(jax.random.key(0), images, labels, num_classes=N,
                                    cfg=_cfg(prob=0.0))
  np.testing.assert_array_equal(out, images)
  np.testing.assert_allclose(targets, mixup.soft_targets(labels, N, 0.1))


def test_deterministic_under_key_and_jittable():
  images, labels = _batch()
  cfg = _cfg()
  step = jax.jit(lambda k, x, y: mixup.mixup_cutmix(k, x, y, num_classes=N, cfg=cfg))
  a = step(jax.random.key(7), images, labels)
  b = step(jax.random.key(7), images, labels)
  c = mixup.mixup_cutmix(jax.random.key(7), images, labels, num_classes=N, cfg=cfg)
  for x, y, z in zip(a, b, c):
    np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(x, z, atol=1e-6)
  outs = {np.asarray(step(jax.random.key(k), images, labels)[1]).tobytes() for k in range(5)}
  assert len(outs) == 5
  bf16 = step(jax.random.key(7), images.astype(jnp.bfloat16), labels)[0]
  assert bf16.dtype == jnp.bfloat16 and a[1].dtype == jnp.float32
