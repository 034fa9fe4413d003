"""`stvit_digits`: scikit-learn's handwritten digits as a TFDS dataset, built offline.

The 1,797 8x8 grey images (UCI optdigits test set, values 0..16) ship inside
scikit-learn, so the quickstart needs no download yet goes through the same
TFDS code path as ImageNet. Images are scaled to 0..255, upsampled bilinearly
to 32x32 and stored as RGB PNGs. Split: stratified 80/20 with a fixed seed
(train 1,437 / test 360).
"""
import fcntl
import os
import time

from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

NAME = 'stvit_digits'
IMAGE_SIZE = 32
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_arrays():
  """(images uint8 (1797, 32, 32, 3), labels int64 (1797,)) from scikit-learn."""
  from sklearn import datasets  # only needed to build the dataset once

  digits = datasets.load_digits()
  x = np.round(digits.images * (255.0 / 16.0)).astype(np.float32)[..., None]
  x = tf.image.resize(x, [IMAGE_SIZE, IMAGE_SIZE], method='bilinear').numpy()
  x = np.clip(np.round(x), 0, 255).astype(np.uint8)
  return np.repeat(x, 3, axis=-1), digits.target.astype(np.int64)


def split_indices(labels):
  """Stratified, seeded split -> {'train': sorted indices, 'test': sorted indices}."""
  from sklearn import model_selection

  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels,
      random_state=SPLIT_SEED)
  return {'train': np.sort(train), 'test': np.sort(test)}


class StvitDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn digits, 10 classes, 32x32 RGB."""

  VERSION = tfds.core.Version('1.0.0')

  # TFDS 4.9.10 finds this itself via the `importlib_resources` backport, which
  # it imports but does not declare for Python >= 3.9; the answer is this file.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(__file__)

  RELEASE_NOTES = {'1.0.0': 'Bilinear 8x8 -> 32x32, stratified 80/20 split (seed 0).'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            'label': tfds.features.ClassLabel(num_classes=10),
            'index': np.int32,  # row in sklearn.datasets.load_digits()
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything ships with scikit-learn
    images, labels = load_arrays()
    return {name: self._generate_examples(images, labels, idx)
            for name, idx in split_indices(labels).items()}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': images[i], 'label': labels[i], 'index': int(i)}


def _build(builder):
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))


def prepared_builder(data_dir=None, *, timeout_s=600, builder_cls=None, build=None):
  """The builder, preparing the dataset first if needed; safe when processes race.

  Local data_dir: an exclusive file lock, so one process builds and the rest
  then read. Remote (gs://): JAX process 0 builds and the others wait.
  builder_cls, build(builder): another self-building dataset (moving_digits.py).
  """
  builder_cls = builder_cls or StvitDigits
  build = build or _build
  name = builder_cls.name
  builder = builder_cls(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  root = os.fspath(builder.data_path.parent.parent)
  if '://' not in root:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f'.{name}.lock'), 'a') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        builder = builder_cls(data_dir=data_dir)  # another process may have built it
        if not builder.is_prepared():
          build(builder)
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
  else:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      build(builder)
    deadline = time.time() + timeout_s
    while not builder_cls(data_dir=data_dir).is_prepared():
      if time.time() > deadline:
        raise TimeoutError(f'{name} did not appear in data_dir={data_dir!r} within {timeout_s}s; '
                           'process 0 builds it: check its log, or build it once with '
                           f'`python -c "import {builder_cls.__module__} as m; '
                           f'm.prepared_builder({data_dir!r})"`')
      time.sleep(2)
  return builder_cls(data_dir=data_dir)
