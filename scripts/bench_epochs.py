"""Epoch boundaries of `pipeline.train_iterator`: per-batch wall and CPU time across them.

    PYTHONPATH=. python scripts/bench_epochs.py [--config=configs/deit_s.py] [--modes=one,per_epoch]

Generates ImageNet-like `imagenet2012` sets of --small and --large train records from
the same JPEGs (stvit_jax/tools/input_benchmark.py `prepare`, reused when present), then
for each mode reads --images images of each set with the config's data recipe:

  one        the pipeline as it is: one tf.data pipeline spans the epochs;
  per_epoch  pipeline.EPOCHS_PER_PIPELINE = 1: a new pipeline every epoch (the same
             batches, as the pipeline was built before), for comparison in the same run.

Prints every batch of the small set (epoch, batch, wall ms, CPU ms: process CPU time,
all threads), then per mode and set: the median batch, the first batches of epochs
1, 2, ... (batch 0 of epoch 0 is the iterator's start-up, not counted anywhere) and
CPU-us per image over all batches after the first. Shared machines: wall times move
with other jobs' load, CPU times much less.

--breakdown: what a new pipeline per epoch costs, piece by piece (TFDS as_dataset,
building the epoch's dataset: tracing the transform, creating its iterator, its
batches), for three epochs of the small set.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stvit_jax.tools import input_benchmark  # noqa: E402  pylint: disable=g-import-not-at-top


def time_batches(cfg, *, batch, num_batches, mode):
  """[(epoch, batch in epoch, wall s, CPU s)] of the first num_batches batches."""
  from stvit_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  saved = pipeline.EPOCHS_PER_PIPELINE
  pipeline.EPOCHS_PER_PIPELINE = 1 if mode == 'per_epoch' else saved
  try:
    steps = pipeline.steps_per_epoch(cfg, global_batch_size=batch, process_count=1)
    it = pipeline.train_iterator(cfg, global_batch_size=batch, seed=0, process_index=0,
                                 process_count=1)
    rows = []
    for i in range(num_batches):
      wall, cpu = time.perf_counter(), time.process_time()
      next(it)
      rows.append((i // steps, i % steps, time.perf_counter() - wall, time.process_time() - cpu))
    del it
  finally:
    pipeline.EPOCHS_PER_PIPELINE = saved
  return rows


def breakdown(cfg, *, batch, epochs=3):
  """Prints wall and CPU s of each piece of a per-epoch pipeline, `epochs` times."""
  from stvit_jax.data import datasets, pipeline  # pylint: disable=g-import-not-at-top
  builder = datasets.builder(cfg)
  split = pipeline.process_split(cfg.train_split, 0, 1, drop_remainder=True)
  steps = pipeline.steps_per_epoch(cfg, global_batch_size=batch, process_count=1)

  def timed(label, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    print(f'{label:<44} wall {time.perf_counter() - wall:6.3f} s  '
          f'CPU {time.process_time() - cpu:6.3f} s', flush=True)
    return out

  read = pipeline._read  # pylint: disable=protected-access
  for e in range(epochs):
    print(f'## epoch {e}')
    timed('TFDS as_dataset', lambda: read(builder, split, cfg, shuffle_seed=e))
    ds = timed('build the epoch (traces the transform)', lambda: pipeline.train_epoch(
        builder, cfg, split=split, epoch=e, seed=0, batch=batch, steps=steps))
    it = timed('create its iterator (graph rewrites, start)', ds.as_numpy_iterator)
    for j in range(steps):
      timed(f'batch {j}', lambda: next(it))


def summary(rows, batch):
  """{median, boundary (walls of batch 0 of epochs >= 1), cpu_us (per image after batch 0)}."""
  later = rows[1:]
  return dict(median=statistics.median(w for _, _, w, _ in later),
              boundary=[w for e, j, w, _ in rows if e > 0 and j == 0],
              cpu_us=1e6 * sum(c for *_, c in later) / (len(later) * batch))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/deit_s.py')
  parser.add_argument('--data_dir', default='/tmp/stvit_bench_epochs')
  parser.add_argument('--jpegs', type=int, default=256, help='distinct generated JPEGs')
  parser.add_argument('--small', type=int, default=256, help='train records of the small set')
  parser.add_argument('--large', type=int, default=2048, help='train records of the large set')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--images', type=int, default=4096, help='images read from each set')
  parser.add_argument('--modes', default='one,per_epoch')
  parser.add_argument('--breakdown', action='store_true',
                      help='time the pieces of a per-epoch pipeline instead')
  args = parser.parse_args(argv)
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  config = input_benchmark.load_config(args.config)
  num_batches = args.images // args.batch
  if args.breakdown:
    cfg = config.data.copy_and_resolve_references()
    cfg.name, cfg.train_split = 'imagenet2012', 'train'
    cfg.data_dir = input_benchmark.prepare(
        os.path.join(args.data_dir, str(args.small)), num_jpegs=args.jpegs,
        num_train=args.small, num_eval=args.batch, log=log)
    breakdown(cfg, batch=args.batch)
    return 0
  results = {}
  for mode in args.modes.split(','):
    for records in (args.small, args.large):
      cfg = config.data.copy_and_resolve_references()
      cfg.name, cfg.train_split = 'imagenet2012', 'train'
      cfg.data_dir = input_benchmark.prepare(
          os.path.join(args.data_dir, str(records)), num_jpegs=args.jpegs, num_train=records,
          num_eval=args.batch, log=log)
      results[mode, records] = time_batches(cfg, batch=args.batch, num_batches=num_batches,
                                            mode=mode)
      log(f'{mode} {records}: done')
  print(f'# {args.config} data recipe, batch {args.batch}, {num_batches} batches per set; '
        f'{input_benchmark._cores()} cores usable')  # pylint: disable=protected-access
  for mode in args.modes.split(','):
    print(f'## {mode}: {args.small} records, every batch')
    print(f'{"epoch":>5} {"batch":>5} {"wall ms":>8} {"CPU ms":>8}')
    for e, j, w, c in results[mode, args.small]:
      print(f'{e:5d} {j:5d} {1e3 * w:8.0f} {1e3 * c:8.0f}' + ('  <- epoch start' if j == 0 else ''))
  print(f'{"mode":<10} {"records":>7} {"median ms":>9} {"epoch-start ms (median, max)":>29} '
        f'{"x median":>8} {"CPU-us/img":>10}')
  for mode in args.modes.split(','):
    s = {r: summary(results[mode, r], args.batch) for r in (args.small, args.large)}
    for r in (args.small, args.large):
      b = s[r]['boundary']
      first = (f'{1e3 * statistics.median(b):8.0f} {1e3 * max(b):8.0f}' if b
               else f'{"-":>8} {"-":>8}')
      ratio = f'{statistics.median(b) / s[r]["median"]:8.2f}' if b else f'{"-":>8}'
      print(f'{mode:<10} {r:7d} {1e3 * s[r]["median"]:9.0f} {first:>29} {ratio} '
            f'{s[r]["cpu_us"]:10.0f}')
    print(f'{mode}: CPU per image, {args.small} / {args.large} records: '
          f'{s[args.small]["cpu_us"] / s[args.large]["cpu_us"]:.2f}x')
  return 0


if __name__ == '__main__':
  sys.exit(main())
