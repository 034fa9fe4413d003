"""Per-op cost of the input pipeline's transforms: CPU-microseconds per image.

    python -m stvit_jax.tools.benchmark --input --profile --config=configs/deit_s.py

Runs growing prefixes of the train transform (decode-and-crop, + resize,
+ flip, + RandAugment, + uint8 ...) and of the eval transform over the same
in-memory JPEGs in tf.data (one map thread, so the process's CPU time is the
ops' cost plus tf.data's per-element overhead), and reports each op as the
difference between consecutive prefixes: process CPU time per image, robust to
other load on the machine. Batching is the difference between batch(b) and none.
"""
from __future__ import annotations

import time

import tensorflow as tf

from stvit_jax.data import augment
from stvit_jax.data import preprocess


def _train_stages(cfg):
  """[(op name, fn(bytes, seed) -> image)]: each stage adds one op to the previous."""
  size = cfg.image_size
  policy = augment.parse_policy(cfg.randaugment) if cfg.randaugment else None
  hp = augment.Hparams(fill=tuple(min(255, round(255 * m)) for m in cfg.mean))

  def upto(n):
    def fn(image_bytes, seed):
      s = tf.random.experimental.stateless_split(seed, 5)
      crop = lambda h, w: preprocess.sample_crop(h, w, s[0], tuple(cfg.crop_scale),  # noqa
                                                 tuple(cfg.crop_ratio))
      image = preprocess._decode_crop(image_bytes, True, crop)  # pylint: disable=protected-access
      if n == 0:
        return tf.reduce_sum(tf.cast(image[:1, :1], tf.int32))  # keep the decode, drop the rest
      image = preprocess._resize(image, [size, size], cfg.interpolation)  # pylint: disable=protected-access
      if n >= 2:
        image = preprocess.flip(image, s[1], cfg.hflip)
      image = tf.cast(image, tf.uint8)
      if n >= 3 and policy is not None:
        image = augment.rand_augment(image, s[2], policy, hp)
      if n >= 4:  # the pre-uint8 host path: normalise and erase in tf.data, ship float32
        image = preprocess._normalize(tf.cast(image, tf.float32), cfg)  # pylint: disable=protected-access
        image = preprocess.random_erasing(image, s[4], max(cfg.reprob, 1e-9))
      return image
    return fn

  names = ['decode-and-crop (fused)', 'resize to %d (%s, antialiased)' % (size, cfg.interpolation),
           'flip', f'RandAugment {cfg.randaugment or "(off)"}',
           f'host normalise + erasing p={cfg.reprob} (normalize_on=host only)']
  return [(name, upto(i)) for i, name in enumerate(names)]


def _cpu_per_image(jpegs, fn, batch):
  """CPU-us per image of tf.data map(fn).batch(batch), after a warm-up batch (the map's
  tracing, graph optimisation and iterator start are not counted)."""
  seeds = tf.stack([tf.range(len(jpegs), dtype=tf.int64), tf.zeros(len(jpegs), tf.int64)], 1)
  ds = tf.data.Dataset.from_tensor_slices((tf.constant(jpegs), seeds)).map(fn).batch(batch)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  it = iter(ds.with_options(options))
  next(it)
  start = time.process_time()
  count = sum(1 for _ in it)
  return (time.process_time() - start) / ((count * batch) or 1) * 1e6


def profile(cfg, jpegs, *, batch=128, rounds=3):
  """[(op, CPU-us per image)] for the train and eval transforms, medians over rounds."""
  rows = {}
  stages = _train_stages(cfg)
  eval_fn = preprocess.eval_transform(cfg, True)
  empty = lambda image_bytes, seed: tf.constant(0)  # noqa: E731 tf.data's per-element cost
  window = lambda h, w: preprocess.eval_window(h, w, cfg.image_size, cfg.crop_pct)  # noqa: E731
  decode_only = lambda image_bytes, seed: tf.reduce_sum(  # noqa: E731
      tf.cast(preprocess._decode_crop(image_bytes, True, window)[:1, :1], tf.int32))  # pylint: disable=protected-access
  uint8_fn = stages[3][1]
  for _ in range(rounds):
    base = _cpu_per_image(jpegs, empty, 1)
    times = [_cpu_per_image(jpegs, fn, 1) for _, fn in stages]
    prev = base
    for (name, _), t in zip(stages, times):
      rows.setdefault('train: ' + name, []).append(t - prev)
      prev = t
    batched = _cpu_per_image(jpegs, uint8_fn, batch)
    rows.setdefault(f'train: batching uint8 x{batch}, vs x1', []).append(batched - times[3])
    decode = _cpu_per_image(jpegs, decode_only, 1)
    full = _cpu_per_image(jpegs, lambda b, s: eval_fn(b), 1)
    rows.setdefault('eval: decode the centre window (fused)', []).append(decode - base)
    rows.setdefault('eval: resize the window to the crop size', []).append(full - decode)
    rows.setdefault('tf.data per-element overhead (x1 batches)', []).append(base)
  return [(name, sorted(v)[len(v) // 2]) for name, v in rows.items()]


def format_profile(rows):
  lines = [f'{"op":<66} {"CPU-us/img":>10}']
  lines += [f'{name:<66} {us:10.0f}' for name, us in rows]
  return '\n'.join(lines)
