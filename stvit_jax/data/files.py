"""One image or clip file -> what the evaluation pipeline's host part makes of it.

`predict` and `visualize` read files through here, so a tool sees exactly what
evaluation sees: the same decode, the same resize of the shorter side to
size / crop_pct and centre crop (data/preprocess.py `eval_transform`), the same
clip views (data/video.py `eval_views`).

    cfg = files.image_config(224)
    image = files.read_image('photo.jpg', cfg)   # (224, 224, 3) uint8, as the host ships it
    x = files.normalise(image, cfg)              # float32 model input
"""
from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from stvit_jax.data import defaults, preprocess, read_errors, video
from stvit_jax.data.builders import video_convert

JPEG = b'\xff\xd8\xff'
EOI = b'\xff\xd9'  # a JPEG's end-of-image marker
TF_FORMATS = (JPEG, b'\x89PNG', b'BM', b'GIF8')  # what tf.io.decode_image reads
READABLE = 'JPEG, PNG, BMP, GIF, WebP, TIFF, ...'


class FileError(ValueError):
  """A file that cannot be read as an image or clip; the message names it."""


def image_config(image_size, dataset='imagenet2012'):
  """The eval preprocessing fields of `dataset`'s preset, at `image_size`."""
  cfg = defaults.data_config(dataset)
  cfg.image_size = image_size
  return cfg


def read_image(path, cfg):
  """The eval transform of one image file: (S, S, 3) uint8 (data.normalize_on='device',
  the default) or float32 normalised ('host'). Formats TensorFlow does not decode
  (WebP, TIFF, ...) go through Pillow first; EXIF rotation is not applied, as in the
  pipeline."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    raise FileError(f'{path}: no such file') from None
  except IsADirectoryError:
    raise FileError(f'{path}: is a directory, not an image file') from None
  except OSError as e:  # permissions, I/O errors: the reason without the errno
    raise FileError(f'{path}: cannot read it ({e.strerror or e})') from None
  if not data:
    raise FileError(f'{path}: empty file, not an image') from None
  if data.startswith(JPEG) and EOI not in data:
    # TensorFlow would fail too, after a C++ log line of its own ('Premature end of JPEG
    # data'); the end-of-image marker occurs nowhere else (0xFF is byte-stuffed).
    raise FileError(f'{path}: cannot decode it: truncated JPEG (the data ends before its '
                    'end-of-image marker)')
  if not data.startswith(TF_FORMATS):  # re-encoded losslessly, as PNG
    try:
      with Image.open(io.BytesIO(data)) as img:
        buf = io.BytesIO()
        img.convert('RGB').save(buf, format='PNG')
    except UnidentifiedImageError:  # its message is the repr of our BytesIO
      raise FileError(f'{path}: not an image Pillow can read (no known format; readable: '
                      f'{READABLE})') from None
    except (OSError, SyntaxError, ValueError) as e:
      raise FileError(f'{path}: cannot decode it ({e})') from None
    data = buf.getvalue()
  try:
    image = preprocess.eval_transform(cfg, data.startswith(JPEG))(tf.constant(data))
  except tf.errors.InvalidArgumentError as e:  # without TensorFlow's op and function names
    raise FileError(f'{path}: cannot decode it ({read_errors.clean(e.message)})') from None
  return np.asarray(image)


def normalise(image, cfg):
  """float32 model input of what `read_image` returns (uint8 images are normalised with
  cfg.mean / cfg.std, as the jitted steps do; float32 ones already are)."""
  if image.dtype != np.uint8:
    return image.astype(np.float32)
  return ((image / np.float32(255.0) - np.float32(cfg.mean)) / np.float32(cfg.std)).astype(
      np.float32)


def video_config(image_size, num_frames, clips, crops, dataset='kinetics400'):
  """The eval view fields of `dataset`'s video preset: `clips` clips of `num_frames`
  frames x `crops` crops, at `image_size`."""
  cfg = defaults.video_data_config(dataset)
  cfg.image_size, cfg.num_frames = image_size, num_frames
  cfg.eval_clips, cfg.eval_crops = clips, crops
  return cfg


def read_clip(path, cfg):
  """float32 (clips * crops, T, S, S, 3), normalised: the eval views of a video file, its
  frames decoded as the dataset conversion stores them."""
  try:
    frames, _, _ = video_convert.decode(path, short_side=None)
  except video_convert.DecodeError as e:
    raise FileError(f'{path}: cannot decode it as a video ({e})') from None
  except FileNotFoundError:
    raise FileError(f'{path}: no such file') from None
  return np.asarray(video.eval_views(cfg)({'video': tf.constant(frames)}), np.float32)
