"""Datasets as a table: how each kind of TFDS dataset becomes examples.

This table is the one place that says which builder, transforms and batch spec
a `data.name` gets (the image pipeline, data/video.py and the trainer all ask it
through `builder` and `get`). A row says its input kind, how to get the prepared builder, how one record becomes a train
example (seeded) and an eval example, and what one example looks like (its
keys, shapes and dtypes: the batch spec the trainer is built from). The
pipeline (`pipeline.py`) does the rest (process shares, shuffling, resuming,
padding, batching) the same way for every row. A new dataset is a new row.

An example is {<inputs>: ..., 'label': int32} (eval adds 'mask'); the model
reads the one key that is not 'label' / 'mask'.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from stvit_jax.data import defaults, device_augment, preprocess
from stvit_jax.data.builders import digits, kinetics, moving_digits  # kinetics: registers them


@dataclasses.dataclass(frozen=True)
class Dataset:
  kind: str                    # 'image' or 'video': the model input kind it feeds
  builder: Callable            # cfg -> a prepared tfds builder
  train_transform: Callable    # (cfg, builder) -> fn(record, seed int64 (2,)) -> example
  eval_transform: Callable     # (cfg, builder) -> fn(record) -> example
  example_spec: Callable       # cfg -> {key: (shape, numpy dtype)} of one example


# ---------------------------------------------------------------- image classification


def _missing_message(builder, cfg):
  root = cfg.data_dir or tfds.core.constants.DATA_DIR
  head = (f'TFDS dataset {builder.name!r} is not prepared in data.data_dir={root!r} '
          f'(nothing at {builder.data_path}). ')
  if cfg.name in kinetics.BUILDERS:
    return head + (f'Convert your download once:\n  python -m stvit_jax.data.builders.kinetics '
                   f'--name {cfg.name} --manual_dir DIR --data_dir {root}\nwith DIR laid out '
                   f'as\n{kinetics.LAYOUT}')
  if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    return head + (
        'It cannot be downloaded automatically. Put the files below in a manual_dir:\n'
        f'  {" ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}\n'
        f'then build it once with `tfds build {builder.name} '
        f'--manual_dir=/path/to/manual_dir --data_dir={root}` and point data.data_dir at '
        'that data_dir (local or gs://).')
  return head + (f'Build it once with `tfds build {builder.name} --data_dir={root}`, '
                 'or set data.data_dir to where it is already prepared (local or gs://).')


def prepare_command(cfg, builder):
  """The shell command that prepares `cfg.name` in its data_dir again, replacing its files
  (a damaged shard is not repaired in place: the whole version is rebuilt)."""
  root = cfg.data_dir or tfds.core.constants.DATA_DIR
  path = shlex.quote(os.fspath(builder.data_path))
  builders = {digits.NAME: digits, moving_digits.NAME: moving_digits}
  if cfg.name in builders:  # self-building: the next run prepares it again
    module = builders[cfg.name].__name__
    return (f'rm -r {path} && python -c "import {module} as m; '
            f'm.prepared_builder({os.fspath(root)!r})"')
  if cfg.name in kinetics.BUILDERS:
    return (f'rm -r {path} && python -m stvit_jax.data.builders.kinetics --name {cfg.name} '
            f'--manual_dir DIR --data_dir {shlex.quote(os.fspath(root))}')
  manual = (' --manual_dir=/path/to/manual_dir'
            if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None) else '')
  return f'tfds build {builder.name} --data_dir={shlex.quote(os.fspath(root))}{manual} --overwrite'


KNOWN = {'image': f"use 'imagenet2012', '{digits.NAME}' or another TFDS image "
                  'classification dataset',
         'video': f'video datasets: {defaults.VIDEO_DATASETS}'}
USE_INSTEAD = {'image': 'use an image config (configs/deit_s.py, ...)',
               'video': 'use a video config (configs/video_*.py)'}


def tfds_builder(cfg, kind):
  """The prepared TFDS classification builder of `cfg.name` with a `kind` ('image' or
  'video') and a 'label' feature; the features are checked before the data (they are
  known before anything is prepared)."""
  try:
    builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f'data.name={cfg.name!r} is not a TFDS dataset; {KNOWN[kind]}') from e
  features = builder.info.features
  other = 'video' if kind == 'image' else 'image'
  if other in features:
    raise ValueError(f'data.name={cfg.name!r} holds {other}s, and this config trains '
                     f'{_A[kind]} model; {USE_INSTEAD[other]}')
  if kind not in features or 'label' not in features:
    raise ValueError(f'data.name={cfg.name!r} has features {list(features)}; '
                     f"{_A[kind].split()[0]} '{kind}' and a 'label' feature are needed")
  if not builder.is_prepared():
    raise FileNotFoundError(_missing_message(builder, cfg))
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


IMAGE_CLASSIFICATION = Dataset('image', lambda cfg: tfds_builder(cfg, 'image'), image_train_transform,
                               image_eval_transform, image_example_spec)

# ---------------------------------------------------------------- video classification


def video_example_spec(cfg):
  """float32 (T, H, W, 3) clips of data.num_frames frames, normalised; int32 labels.
  (Evaluation adds a views axis: data/video.py's eval iterator.)"""
  return {'video': ((cfg.num_frames, cfg.image_size, cfg.image_size, 3), np.float32),
          'label': ((), np.int32)}


# The transforms of video rows are data/video.py's (clip sampling, multi-view
# evaluation) and are not looked up here; their rows give the builder and the
# trainer's batch spec.
VIDEO_CLASSIFICATION = Dataset('video', lambda cfg: tfds_builder(cfg, 'video'), None, None,
                               video_example_spec)

# data.name -> row; a name not listed is a TFDS classification dataset of the
# model's input kind (KINDS).
KINDS = {'image': IMAGE_CLASSIFICATION, 'video': VIDEO_CLASSIFICATION}
DATASETS = {
    'imagenet2012': IMAGE_CLASSIFICATION,
    digits.NAME: dataclasses.replace(
        IMAGE_CLASSIFICATION, builder=lambda cfg: digits.prepared_builder(cfg.data_dir)),
    **{name: VIDEO_CLASSIFICATION for name in kinetics.BUILDERS},
    moving_digits.NAME: dataclasses.replace(
        VIDEO_CLASSIFICATION, builder=lambda cfg: moving_digits.prepared_builder(cfg.data_dir)),
}


def get(name, input_kind='image'):
  """The row of dataset `name`; for a name not listed, that of `input_kind` datasets."""
  return DATASETS.get(name, KINDS[input_kind])


def builder(cfg, input_kind='image'):
  """The prepared TFDS builder of `cfg.name` for a model of `input_kind`; a ValueError
  naming the field when the dataset holds the other kind, FileNotFoundError with the
  command that prepares it."""
  row = get(cfg.name, input_kind)
  if row.kind != input_kind:
    if row.kind == 'video':
      fix = ("use a video config (configs/video_*.py) or an image dataset "
             f"('imagenet2012', '{digits.NAME}')")
    else:
      fix = f'use an image config or a video dataset {defaults.VIDEO_DATASETS}'
    raise ValueError(f'data.name={cfg.name!r} is {_A[row.kind]} dataset, and this config '
                     f'trains {_A[input_kind]} model; {fix}')
  return row.builder(cfg)


_A = {'image': 'an image', 'video': 'a video'}
