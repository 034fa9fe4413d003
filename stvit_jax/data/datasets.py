"""Datasets as a table: how each kind of TFDS dataset becomes examples.

A row says how to get the prepared builder, how one record becomes a train
example (seeded) and an eval example, and what one example looks like (its
keys, shapes and dtypes: the batch spec the trainer is built from). The
pipeline (`pipeline.py`) does the rest (process shares, shuffling, resuming,
padding, batching) the same way for every row. A new dataset is a new row.

An example is {<inputs>: ..., 'label': int32} (eval adds 'mask'); the model
reads the one key that is not 'label' / 'mask'.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from stvit_jax.data import defaults
from stvit_jax.data import device_augment
from stvit_jax.data import digits
from stvit_jax.data import preprocess


@dataclasses.dataclass(frozen=True)
class Dataset:
  builder: Callable            # cfg -> a prepared tfds builder
  train_transform: Callable    # (cfg, builder) -> fn(record, seed int64 (2,)) -> example
  eval_transform: Callable     # (cfg, builder) -> fn(record) -> example
  example_spec: Callable       # cfg -> {key: (shape, numpy dtype)} of one example


# ---------------------------------------------------------------- image classification


def _missing_message(builder, cfg):
  root = cfg.data_dir or tfds.core.constants.DATA_DIR
  head = (f'TFDS dataset {builder.name!r} is not prepared in data.data_dir={root!r} '
          f'(nothing at {builder.data_path}). ')
  if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    return head + (
        'It cannot be downloaded automatically. Put the files below in a manual_dir:\n'
        f'  {" ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}\n'
        f'then build it once with `tfds build {builder.name} '
        f'--manual_dir=/path/to/manual_dir --data_dir={root}` and point data.data_dir at '
        'that data_dir (local or gs://).')
  return head + (f'Build it once with `tfds build {builder.name} --data_dir={root}`, '
                 'or set data.data_dir to where it is already prepared (local or gs://).')


def tfds_image_builder(cfg):
  """A prepared TFDS image classification builder ('image' and 'label' features)."""
  if cfg.name in defaults.VIDEO_DATASETS:
    raise ValueError(f'data.name={cfg.name!r} is a video dataset, and this config trains an '
                     'image model; use a video config (configs/video_*.py) or an image '
                     f"dataset ('imagenet2012', '{digits.NAME}')")
  try:
    builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"data.name={cfg.name!r} is not a TFDS dataset; use 'imagenet2012', "
                     f"'{digits.NAME}' or another TFDS image classification dataset") from e
  if not builder.is_prepared():
    raise FileNotFoundError(_missing_message(builder, cfg))
  features = builder.info.features
  if 'video' in features:
    raise ValueError(f'data.name={cfg.name!r} holds videos, and this config trains an image '
                     'model; use a video config (configs/video_*.py)')
  if 'image' not in features or 'label' not in features:
    raise ValueError(f'data.name={cfg.name!r} has features {list(features)}; '
                     "an 'image' and a 'label' feature are needed")
  return builder


def is_jpeg(builder):
  return getattr(builder.info.features['image'], 'encoding_format', None) == 'jpeg'


def image_train_transform(cfg, builder):
  transform = preprocess.train_transform(cfg, is_jpeg(builder))
  return lambda ex, seed: {'image': transform(ex['image'], seed),
                           'label': tf.cast(ex['label'], tf.int32)}


def image_eval_transform(cfg, builder):
  transform = preprocess.eval_transform(cfg, is_jpeg(builder))
  return lambda ex: {'image': transform(ex['image']), 'label': tf.cast(ex['label'], tf.int32)}


def image_example_spec(cfg):
  """(H, W, 3) images (uint8, or float32 normalised with data.normalize_on='host');
  int32 labels."""
  return {'image': ((cfg.image_size, cfg.image_size, 3), np.dtype(device_augment.image_dtype(cfg))),
          'label': ((), np.int32)}


IMAGE_CLASSIFICATION = Dataset(tfds_image_builder, image_train_transform,
                               image_eval_transform, image_example_spec)

# ---------------------------------------------------------------- video classification


def video_example_spec(cfg):
  """float32 (T, H, W, 3) clips of data.num_frames frames, normalised; int32 labels.
  (Evaluation adds a views axis: data/video.py's eval iterator.)"""
  return {'video': ((cfg.num_frames, cfg.image_size, cfg.image_size, 3), np.float32),
          'label': ((), np.int32)}


# Video datasets are read by data/video.py (its builder, clip transforms and
# multi-view evaluation, through this pipeline's sharding and resume); their row
# gives the trainer its batch spec, and the image builder refuses them with the
# field to change, should an image model's config name one.
VIDEO_CLASSIFICATION = dataclasses.replace(IMAGE_CLASSIFICATION,
                                           example_spec=video_example_spec)

# data.name -> row; a name not listed is a TFDS classification dataset of the
# model's input kind (KINDS).
KINDS = {'image': IMAGE_CLASSIFICATION, 'video': VIDEO_CLASSIFICATION}
DATASETS = {
    'imagenet2012': IMAGE_CLASSIFICATION,
    digits.NAME: dataclasses.replace(
        IMAGE_CLASSIFICATION, builder=lambda cfg: digits.prepared_builder(cfg.data_dir)),
    **{name: VIDEO_CLASSIFICATION for name in defaults.VIDEO_DATASETS},
}


def get(name, input_kind='image'):
  """The row of dataset `name`; for a name not listed, that of `input_kind` datasets."""
  return DATASETS.get(name, KINDS[input_kind])
