"""Video data speed on this machine: conversion videos/s per worker, input clips/s.

  python scripts/bench_video.py [--videos 24] [--seconds 4] [--workers 1,2] [--batches 6]

Writes Kinetics-like mp4s (340x256 H.264 at 25 fps, textured moving content, so
the codec has real work), converts them with `python -m stvit_jax.data.builders.kinetics`'s
code (frames to short side 256, JPEG) with each worker count, then reads the
result with the video train pipeline at the Video Swin recipe's setting (docs/video.md section 1) (32 frames, stride 2,
RandomResizedCrop 224, flip, normalise). Prints wall rates and rates per
CPU-second of this process and its children (robust to other load).
"""
import argparse
import csv
import os
import resource
import shutil
import tempfile
import time

import numpy as np


def cpu_seconds():
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_videos(root, count, seconds, fps=25):
  from stvit_jax.data.builders import kinetics, video_convert  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, 'annotations'))
  rows = []
  yy, xx = np.mgrid[:256, :340]
  for i in range(count):
    label = f'class {i % 4}'
    texture = rng.integers(0, 255, (256, 340, 3), dtype=np.uint8)
    frames = []
    for t in range(seconds * fps):  # a textured field drifting plus a moving bright disc
      f = np.roll(texture, (t, 2 * t), (0, 1)).copy()
      cy, cx = 128 + 80 * np.sin(t / 10 + i), 170 + 120 * np.cos(t / 13)
      f[(yy - cy) ** 2 + (xx - cx) ** 2 < 900] = 255
      frames.append(f)
    name = f'vid{i:04d}_{0:06d}_{seconds:06d}.mp4'
    video_convert.write_mp4(os.path.join(root, 'train', name), np.stack(frames), fps, crf=23)
    rows.append((label, f'vid{i:04d}', 0, seconds, 'train'))
  with open(os.path.join(root, 'annotations', 'train.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(kinetics.HEADER)
    w.writerows(rows)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--videos', type=int, default=24)
  parser.add_argument('--seconds', type=int, default=4)
  parser.add_argument('--workers', default='1,2')
  parser.add_argument('--batches', type=int, default=6)
  parser.add_argument('--batch', type=int, default=8)
  args = parser.parse_args()
  from stvit_jax.data import defaults, video  # pylint: disable=g-import-not-at-top
  from stvit_jax.data.builders import kinetics
  tmp = tempfile.mkdtemp(prefix='bench_video_')
  try:
    manual = os.path.join(tmp, 'manual')
    write_videos(manual, args.videos, args.seconds)
    frames = args.videos * args.seconds * 25
    print(f'{args.videos} videos of {args.seconds} s, 340x256 at 25 fps ({frames} frames)')
    out = None
    for workers in [int(w) for w in args.workers.split(',')]:
      out = os.path.join(tmp, f'tfds{workers}')
      t0, c0 = time.time(), cpu_seconds()
      kinetics.prepare(kinetics.Kinetics400, manual, data_dir=out, workers=workers,
                       videos_per_shard=max(1, args.videos // (4 * workers)),
                       progress_every_s=1e9)
      wall, cpu = time.time() - t0, cpu_seconds() - c0
      print(f'convert workers={workers}: {args.videos / wall:.2f} videos/s '
            f'({args.videos / wall / workers:.2f} per worker, {frames / wall:.0f} frames/s), '
            f'{args.videos / cpu:.2f} videos per CPU-second (incl. start-up)')
    cfg = defaults.video_data_config('kinetics400')
    cfg.update(data_dir=out, shuffle_buffer=64)
    it = video.train_iterator(cfg, global_batch_size=args.batch, seed=0, process_count=1)
    next(it)  # start-up and the first prefetches
    t0, c0 = time.time(), cpu_seconds()
    for _ in range(args.batches):
      batch = next(it)
    wall, cpu = time.time() - t0, cpu_seconds() - c0
    clips = args.batches * args.batch
    print(f'train input {batch["video"].shape} float32: {clips / wall:.2f} clips/s, '
          f'{clips / cpu:.2f} clips per CPU-second')
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  main()
