"""`stvit_moving_digits`: handwritten digits moving across a canvas, a video dataset built offline.

The video quickstart's data. Each video is 24 frames at 12 fps of a 32x32 canvas
on which one of scikit-learn's 1,797 digits (12x12, a random colour) moves in a
straight line, wrapping around the edges. The class is the motion, never the
digit: 4 directions x 2 speeds (1 or 2 pixels per frame) = 8 classes, labels such
as "left, slow" (with a comma, so the CSVs quote them as Kinetics's do). Start
positions are uniform on the torus, so any single frame is equally likely under
every class: a model that sees one frame is at chance (1/8), and only motion
tells the classes apart.

The videos are written as real H.264 mp4 files in the Kinetics (CVDF) layout --
annotations/{train,val}.csv, train/ in per-class folders, val/ flat -- and
converted by the same code as Kinetics (`kinetics.prepare`), at their native
32x32 size. Split: 1,000 train / 240 validation videos, seeded.
"""
import csv
import os
import shutil
import tempfile

import numpy as np

from stvit_jax.data.builders import digits
from stvit_jax.data.builders import kinetics
from stvit_jax.data.builders import video_convert

NAME = 'stvit_moving_digits'
SIZE = 32          # canvas side
SPRITE = 12        # digit side
FRAMES = 24
FPS = 12
DIRECTIONS = {'right': (0, 1), 'left': (0, -1), 'down': (1, 0), 'up': (-1, 0)}
SPEEDS = {'slow': 1, 'fast': 2}  # pixels per frame
CLASSES = sorted(f'{d}, {s}' for d in DIRECTIONS for s in SPEEDS)
SPLITS = {'train': 1000, 'val': 240}
SEED = 0


def _sprites():
  """float32 (1797, 12, 12) in [0, 1]: the digits, upsampled bilinearly."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  images = datasets.load_digits().images / 16.0
  return np.stack([np.asarray(Image.fromarray((im * 255).astype(np.uint8)).resize(
      (SPRITE, SPRITE), Image.BILINEAR), np.float32) / 255.0 for im in images])


def render(sprite, colour, start, velocity, frames=FRAMES):
  """uint8 (frames, SIZE, SIZE, 3): `sprite` moving from `start` by `velocity` per frame."""
  canvas = np.zeros((SIZE, SIZE), np.float32)
  canvas[:SPRITE, :SPRITE] = sprite
  out = np.empty((frames, SIZE, SIZE, 3), np.uint8)
  for t in range(frames):
    shifted = np.roll(canvas, (start[0] + t * velocity[0], start[1] + t * velocity[1]), (0, 1))
    out[t] = np.round(shifted[..., None] * colour * 255).astype(np.uint8)
  return out


def examples(count, rng, sprites=None):
  """Yields count (class name, uint8 frames (FRAMES, SIZE, SIZE, 3)), classes balanced."""
  sprites = _sprites() if sprites is None else sprites
  for i in range(count):
    name = CLASSES[i % len(CLASSES)]
    direction, speed = name.split(', ')
    velocity = np.array(DIRECTIONS[direction]) * SPEEDS[speed]
    start = rng.integers(0, SIZE, 2)
    colour = rng.uniform(0.5, 1.0, 3).astype(np.float32)
    yield name, render(sprites[rng.integers(len(sprites))], colour, start, velocity)


def write_videos(manual_dir, splits=None, seed=SEED):
  """Writes the mp4s and annotation CSVs of the dataset in the Kinetics layout."""
  rng = np.random.default_rng(seed)
  sprites = _sprites()
  os.makedirs(os.path.join(manual_dir, 'annotations'), exist_ok=True)
  for split, count in (splits or SPLITS).items():
    rows = []
    for i, (name, frames) in enumerate(examples(count, rng, sprites)):
      youtube_id = f'{split}{i:05d}'
      # per-class folders for train, flat for val: both layouts of Kinetics copies
      folder = os.path.join(manual_dir, split, *([name] if split == 'train' else []))
      video_convert.write_mp4(os.path.join(folder, f'{youtube_id}_000000_000002.mp4'),
                              frames, FPS)
      rows.append((name, youtube_id, 0, 2, split))
    with open(os.path.join(manual_dir, 'annotations', f'{split}.csv'), 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(kinetics.HEADER)
      writer.writerows(rows)


class StvitMovingDigits(kinetics.VideoClassification):
  """Digits moving across a 32x32 canvas; 8 motion classes (direction x speed)."""

  SHORT_SIDE = None  # keep the native 32x32
  NUM_CLASSES = len(CLASSES)
  HOMEPAGE = 'https://archive.ics.uci.edu/dataset/80'  # the digits


def _build(builder):
  """Generates the mp4s in a temporary folder and converts them like Kinetics."""
  manual_dir = tempfile.mkdtemp(prefix=f'{NAME}_')
  try:
    write_videos(manual_dir)
    kinetics.prepare(StvitMovingDigits, manual_dir, data_dir=builder.data_dir_root,
                     workers=1, videos_per_shard=250, progress_every_s=30.0)
  finally:
    shutil.rmtree(manual_dir, ignore_errors=True)


def prepared_builder(data_dir=None, *, timeout_s=600):
  """The builder, generating and converting the dataset on first use (~1 min, offline)."""
  return digits.prepared_builder(data_dir, timeout_s=timeout_s, builder_cls=StvitMovingDigits,
                                 build=_build)
