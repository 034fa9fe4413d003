"""On-device RandAugment and colour jitter (data/device_randaugment.py) against timm / PIL:
each op against PIL's outputs (tests/fixtures/timm_randaugment_ops.npz, written by
scripts/make_randaugment_fixture.py), the TF host ops against the same outputs, timm's
sampling distribution, per-row determinism, and ColorJitter against PIL ImageEnhance."""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance
from scipy import stats

from stvit_jax.data import augment
from stvit_jax.data import device_color
from stvit_jax.data import device_randaugment as dra

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))
import make_randaugment_fixture as fixture_writer  # noqa: E402  how PIL's outputs were made

FIXTURE = Path(__file__).parent / 'fixtures' / 'timm_randaugment_ops.npz'
GEOMETRIC = set(dra.WARP_OPS)
HP = augment.Hparams(fill=fixture_writer.FILL)
DEIT = augment.parse_policy('rand-m9-mstd0.5-inc1')


def _fixture():
  with np.load(FIXTURE) as f:
    return (f['images'], f['outputs'], [str(n) for n in f['names']], f['levels'], f['signs'])


def _bound(name):
  return 2.0 if name in GEOMETRIC else 1.0  # mean |ours - PIL| in grey levels


def test_fixture_covers_every_op_and_is_small():
  _, _, names, _, _ = _fixture()
  assert set(names) == set(augment.OPS) == set(dra.OP_NAMES)
  assert FIXTURE.stat().st_size < 1_000_000


_apply = jax.jit(dra.apply_ops, static_argnums=4)


def test_device_ops_match_pil():
  """Every op, magnitude and sign: all fixture images in one batch per case; then all cases
  of one image in one batch (each row a different op, as rand_augment's layers are)."""
  imgs, outs, names, levels, signs = _fixture()
  ids = np.array([dra.OP_NAMES.index(n) for n in names])
  errors = {}
  for j, name in enumerate(names):
    n = len(imgs)
    got = np.asarray(_apply(jnp.asarray(imgs), np.full(n, ids[j]), np.full(n, levels[j]),
                            np.full(n, signs[j]), HP))
    errors[(name, levels[j], signs[j])] = np.abs(got.astype(int) - outs[:, j]).mean()
  bad = {k: round(v, 2) for k, v in errors.items() if v > _bound(k[0])}
  assert not bad, f'mean |device - PIL| above bound: {bad}'
  mixed = np.asarray(_apply(jnp.asarray(np.repeat(imgs[:1], len(names), 0)), ids, levels,
                            signs, HP))
  for j, name in enumerate(names):
    assert np.abs(mixed[j].astype(int) - outs[0, j]).mean() <= _bound(name), name
  # Both kinds are nearly exact (same formulas, kernel a = -1, truncation), well inside the
  # bounds: a 1-pixel or half-pixel shift, or a = -0.5, would be ~2-5 grey levels.
  assert max(errors.values()) < 0.05, max(errors.values())


def _tf_seed(sign):
  """A TF seed for which augment._negate keeps (+1) or flips (-1) the sign."""
  for s in range(100):
    flip = float(tf.random.stateless_uniform([], tf.constant([s, 0], tf.int64))) < 0.5
    if (-1.0 if flip else 1.0) == sign:
      return [s, 0]
  raise AssertionError('no seed found')


def test_tf_host_ops_match_pil():
  imgs, outs, names, levels, signs = _fixture()
  bad, worst = {}, []
  for j, name in enumerate(names):
    seed = tf.constant(_tf_seed(signs[j]), tf.int64)
    got = np.stack([augment.OPS[name](tf.constant(im), tf.constant(levels[j]), seed, HP).numpy()
                    for im in imgs])
    err = np.abs(got.astype(int) - outs[:, j]).mean()
    worst.append(err)
    if err > _bound(name):
      bad[(name, float(levels[j]), float(signs[j]))] = round(err, 2)
  assert not bad, f'mean |TF host - PIL| above bound: {bad}'
  assert max(worst) < 0.05, max(worst)


def test_no_op_at_identity():
  imgs, _, _, _, _ = _fixture()
  out = _apply(jnp.asarray(imgs), np.full(3, -1), np.full(3, 9.0), np.ones(3), HP)
  np.testing.assert_array_equal(np.asarray(out), imgs)


N_DRAWS = 10_000


def _draws(policy=DEIT, n=N_DRAWS):
  keys = jax.random.split(jax.random.key(0), n)
  op, level, sign = jax.jit(dra.sample, static_argnums=1)(keys, policy)
  return np.asarray(op).ravel(), np.asarray(level).ravel(), np.asarray(sign).ravel()


def test_op_choice_frequencies_match_timm():
  """timm: each layer picks one of the 15 ops uniformly (with replacement), applied with p."""
  op, _, _ = _draws()
  ids = [dra.OP_NAMES.index(n) for n in DEIT.ops]
  counts = np.array([np.sum(op == -1)] + [np.sum(op == i) for i in ids])
  assert counts.sum() == op.size  # no op outside the policy
  expected = op.size * np.array([1 - DEIT.prob] + [DEIT.prob / len(ids)] * len(ids))
  p = stats.chisquare(counts, expected).pvalue
  assert p > 0.01, (p, counts)
  # the same test catches a biased choice: op 0 twice as likely
  biased = counts.copy()
  biased[1] *= 2
  assert stats.chisquare(biased, expected * biased.sum() / counts.sum()).pvalue < 0.01


def test_magnitudes_and_signs_match_timm():
  """timm: gauss(9, 0.5) clipped to [0, 10]; the part below 10 is a normal's CDF, the
  clipped part an atom of P(N > 10); signs +-1 with probability 1/2."""
  _, level, sign = _draws()
  m, s = DEIT.magnitude, DEIT.magnitude_std
  below = level[level < 10]
  p_ks = stats.kstest(below, lambda x: stats.norm.cdf(x, m, s) / stats.norm.cdf(10, m, s)).pvalue
  assert p_ks > 0.01, p_ks
  p_atom = stats.binomtest(int(np.sum(level == 10)), level.size, stats.norm.sf(10, m, s)).pvalue
  assert p_atom > 0.01, p_atom
  assert stats.binomtest(int(np.sum(sign > 0)), sign.size, 0.5).pvalue > 0.01
  assert set(np.unique(sign)) == {-1.0, 1.0}
  # a wrong std (timm's 0.5 vs 0.7) fails the same test
  assert stats.kstest(below, lambda x: stats.norm.cdf(x, m, 0.7) / stats.norm.cdf(10, m, 0.7)
                      ).pvalue < 0.01
  _, uniform, _ = _draws(augment.parse_policy('rand-m9-mstd101'), 2000)
  assert stats.kstest(uniform, stats.uniform(0, 9).cdf).pvalue > 0.01


def test_rand_augment_rows_depend_only_on_their_keys():
  imgs, _, _, _, _ = _fixture()
  batch = np.concatenate([imgs, imgs[::-1], imgs])                  # 9 rows
  keys = jax.random.split(jax.random.key(3), len(batch))
  fn = jax.jit(dra.rand_augment, static_argnums=(2, 3))
  out = np.asarray(fn(keys, jnp.asarray(batch), DEIT, HP))
  assert out.shape == batch.shape and out.dtype == np.uint8
  assert np.mean([not np.array_equal(o, b) for o, b in zip(out, batch)]) > 0.5
  perm = np.array([4, 0, 8, 2, 6, 1, 7, 3, 5])
  np.testing.assert_array_equal(np.asarray(fn(keys[perm], jnp.asarray(batch[perm]), DEIT, HP)),
                                out[perm])
  np.testing.assert_array_equal(np.asarray(fn(keys[2:4], jnp.asarray(batch[2:4]), DEIT, HP)),
                                out[2:4])
  never = fn(keys, jnp.asarray(batch), augment.parse_policy('rand-m9-p0'), HP)
  np.testing.assert_array_equal(np.asarray(never), batch)


def test_rand_augment_is_two_sampled_ops():
  """rand_augment = apply_ops of the sampled (op, level, sign) per layer, in order."""
  imgs, _, _, _, _ = _fixture()
  keys = jax.random.split(jax.random.key(5), 3)
  policy = augment.parse_policy('rand-n3-m9-mstd0.5-inc1-p1')
  out = np.asarray(dra.rand_augment(keys, jnp.asarray(imgs), policy, HP))
  op, level, sign = dra.sample(keys, policy)
  assert np.all(np.asarray(op) >= 0)  # p1: every layer applies an op
  x = jnp.asarray(imgs)
  for i in range(3):
    x = dra.apply_ops(x, op[:, i], level[:, i], sign[:, i], HP)
  np.testing.assert_array_equal(out, np.asarray(x))


def test_rand_augment_errors_name_the_field():
  with pytest.raises(ValueError, match='images: expected uint8'):
    dra.rand_augment(jax.random.split(jax.random.key(0), 1), jnp.zeros((1, 8, 8, 3)), DEIT, HP)
  with pytest.raises(ValueError, match="policy.ops: unknown ops \\['Blur'\\]; valid ops"):
    dra.op_ids(('Blur', 'Invert'))
  with pytest.raises(ValueError, match="interpolation='lanczos'.*bicubic"):
    dra.apply_ops(jnp.zeros((1, 8, 8, 3), jnp.uint8), [dra.OP_NAMES.index('Rotate')], [5.0],
                  [1.0], augment.Hparams(interpolation='lanczos'))


# ---------------------------------------------------------------- colour jitter

PIL_JITTER = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


def test_color_jitter_matches_pil_given_its_draws():
  """Each image: torchvision's PIL path, ImageEnhance brightness / contrast / saturation in
  the drawn order with the drawn factors, within 1 grey level on average."""
  imgs, _, _, _, _ = _fixture()
  keys = jax.random.split(jax.random.key(1), 3)
  out = np.asarray(jax.jit(dra.color_jitter, static_argnums=2)(keys, jnp.asarray(imgs), 0.4))
  for key, img, got in zip(keys, imgs, out):
    k_factor, k_order = jax.random.split(key)
    factors = np.asarray(jax.random.uniform(k_factor, (3,), minval=0.6, maxval=1.4))
    pil = Image.fromarray(img)
    for op in np.asarray(jax.random.permutation(k_order, 3)):
      pil = PIL_JITTER[op](pil).enhance(float(factors[op]))
    assert np.abs(got.astype(int) - np.asarray(pil)).mean() <= 1.0
    assert not np.array_equal(got, img)


def test_color_jitter_distribution():
  """Factors U[0.6, 1.4] (chi-square on 16 equal bins) and the six orders equally likely."""
  keys = jax.random.split(jax.random.key(2), N_DRAWS)
  # A one-pixel grey image isolates brightness: contrast and saturation blend a grey with
  # itself. 180 -> floor(180 f), uniform on [108, 252): 16 bins of 9 grey levels.
  grey = jnp.full((N_DRAWS, 1, 1, 3), 180, jnp.uint8)
  out = np.asarray(jax.jit(dra.color_jitter, static_argnums=2)(keys, grey, 0.4))[:, 0, 0, 0]
  assert out.min() >= 108 and out.max() <= 251
  counts = np.bincount((out.astype(int) - 108) // 9, minlength=16)
  assert stats.chisquare(counts).pvalue > 0.01, counts
  narrow = np.bincount((np.minimum(out, 180).astype(int) - 108) // 9, minlength=16)
  assert stats.chisquare(narrow).pvalue < 0.01  # e.g. strength 0.4 read as [0.6, 1.0]
  orders = np.stack([np.asarray(jax.random.permutation(jax.random.split(k)[1], 3))
                     for k in keys[:1200]])
  codes = orders @ np.array([9, 3, 1])
  counts = np.array([np.sum(codes == c) for c in np.unique(codes)])
  assert len(counts) == 6 and stats.chisquare(counts).pvalue > 0.01
  with pytest.raises(ValueError, match='color_jitter strength=0'):
    dra.color_jitter(keys[:1], grey[:1], 0)


def test_equalize_lut_is_pils_formula():
  """PIL ImageOps.equalize on a single channel with a known histogram."""
  hist = np.zeros((1, 3, 256), np.int32)
  hist[0, :, [10, 20, 30]] = [[100] * 3, [50] * 3, [106] * 3]       # step = 150 // 255 = 0
  np.testing.assert_array_equal(np.asarray(device_color.equalize_lut(jnp.asarray(hist)))[0, 0],
                                np.arange(256))
  hist[0, :, [10, 20, 30]] = [[1000] * 3, [530] * 3, [400] * 3]      # step = 1530 // 255 = 6
  lut = np.asarray(device_color.equalize_lut(jnp.asarray(hist)))[0, 0]
  assert (lut[10], lut[20], lut[30]) == (3 // 6, (3 + 1000) // 6, (3 + 1530) // 6)
  assert lut[30] == 255


@pytest.mark.parametrize('count', [0, 1, 4, 9, 20])
def test_on_rows_applies_fn_exactly_to_the_needed_rows(count):
  """Chunked gather / scatter == a where over the whole batch, for counts that fill no chunk,
  one, several and all rows with a ragged last chunk (20 rows, chunks of 8)."""
  from stvit_jax.data import device_warp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(count)
  x = jnp.asarray(rng.integers(0, 256, (20, 3, 2, 3), np.uint8))
  add = jnp.asarray(rng.integers(1, 50, 20), jnp.uint8)
  need = np.zeros(20, bool)
  need[rng.permutation(20)[:count]] = True
  fn = lambda imgs, a: 255 - imgs + a[:, None, None, None]  # noqa: E731
  got = jax.jit(lambda n: device_warp.on_rows(fn, n, x, add, chunk=8))(jnp.asarray(need))
  np.testing.assert_array_equal(np.asarray(got),
                                np.where(need[:, None, None, None], fn(x, add), x))
