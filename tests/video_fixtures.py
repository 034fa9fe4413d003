"""A tiny Kinetics-layout folder of generated mp4s, for the builder and pipeline tests.

Videos are 24x32 (short side 24), 5-16 frames at 8 fps; two top-left pixel
blocks encode its frame index and the video's label (so tests can check
which frames a clip sampled). The folder has: a label with a comma (quoted in
the CSV), train videos in per-class folders, val videos flat, one zero-length
file, one file of garbage bytes, one listed but missing file, and one file only
present in the replacement folder.
"""
import csv
import os

import numpy as np

from stvit_jax.data.builders import kinetics
from stvit_jax.data.builders import video_convert

LABELS = ['abseiling', 'playing drums, fast', 'zumba']  # sorted; one with a comma
HEIGHT, WIDTH = 24, 32


def frames_for(label_id, num_frames):
  """uint8 (num_frames, H, W, 3): the frame index and the label as grey levels (8x8 blocks)."""
  x = np.zeros((num_frames, HEIGHT, WIDTH, 3), np.uint8)
  for t in range(num_frames):
    x[t, :8, :8] = 18 * t + 10  # grey: luma is stored at full resolution, colour is not
    x[t, :8, 8:16] = 60 * label_id + 30
    x[t, 8:, :, 2] = 128  # a flat area: any crop keeps some of it
  return x


def make_kinetics_dir(root, *, train=9, val=6):
  """Writes the folder; returns {tfds split: [(video_id, label, num_frames, fate)]}."""
  os.makedirs(os.path.join(root, 'annotations'))
  listing = {}
  for split, count in (('train', train), ('val', val)):
    rows, items = [], []
    for i in range(count):
      label_id = i % len(LABELS)
      label = LABELS[label_id]
      youtube_id = f'{split}-{i:03d}'  # YouTube ids may contain '-'
      video_id = f'{youtube_id}_{i:06d}_{i + 10:06d}'
      num_frames = 5 + i
      folder = os.path.join(root, split, label) if split == 'train' else os.path.join(root, split)
      path = os.path.join(folder, video_id + '.mp4')
      fate = 'ok'
      if split == 'train' and i == 1:
        fate = 'missing'  # listed, no file
      elif split == 'train' and i == 2:
        fate = 'zero-length'
        os.makedirs(folder, exist_ok=True)
        open(path, 'wb').close()
      elif split == 'val' and i == 0:
        fate = 'corrupt'
        os.makedirs(folder, exist_ok=True)
        with open(path, 'wb') as f:
          f.write(b'\x00\x00\x00\x18ftypmp42' + bytes(range(256)) * 4)
      elif split == 'train' and i == 3:
        fate = 'replaced'  # a corrupt original and a good file in replacement/
        os.makedirs(folder, exist_ok=True)
        with open(path, 'wb') as f:
          f.write(b'not a video')
        video_convert.write_mp4(os.path.join(root, 'replacement', video_id + '.mp4'),
                                frames_for(label_id, num_frames), 8)
      else:
        video_convert.write_mp4(path, frames_for(label_id, num_frames), 8)
      rows.append((label, youtube_id, i, i + 10, split))
      items.append((video_id, label, num_frames, fate))
    with open(os.path.join(root, 'annotations', f'{split}.csv'), 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(kinetics.HEADER)
      writer.writerows(rows)
    listing[kinetics.CSV_SPLITS[split]] = items
  return listing


class TinyVideos(kinetics.VideoClassification):
  """The fixture folder converted at its native 24x32 (Kinetics would resize to 256)."""
  SHORT_SIDE = None
  NUM_CLASSES = len(LABELS)


def video_cfg(data_dir, **overrides):
  """A video data config for `tiny_videos`: identity normalisation (pixel values out)."""
  from stvit_jax.data import defaults  # pylint: disable=g-import-not-at-top
  cfg = defaults.video_data_config('kinetics400')
  cfg.update(name='tiny_videos', data_dir=data_dir, image_size=16, num_frames=4,
             frame_stride=2, eval_clips=2, eval_crops=3, mean=(0.0, 0.0, 0.0),
             std=(1 / 255, 1 / 255, 1 / 255), shuffle_buffer=16, shard_by='process')
  cfg.update(overrides)
  return cfg
