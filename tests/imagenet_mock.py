"""The real TFDS `imagenet2012` builder under `tfds.testing.mock_data`, for tests.

`write_metadata` writes split sizes to a temporary data_dir; `mocked(data_dir)`
then serves small JPEGs of random sizes through a split-aware `as_dataset_fn`,
so per-process sub-splits (`tfds.even_splits`) return the right examples. Each
example's label is its index in the split, which lets tests check which
examples were seen.
"""
import contextlib
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds


def write_metadata(data_dir, splits):
  """`splits`: {'train': n, 'validation': m}, one shard each."""
  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
      dataset_name='imagenet2012', split='train', filetype_suffix='tfrecord')
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0,
                          filename_template=template.replace(split=name))
      for name, n in splits.items()]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)


def fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
  """Examples [skip, skip + take) of the single fake shard of the split."""
  del read_config, shuffle_files
  (instruction,) = self.info.splits[split].file_instructions
  name = 'train' if '-train.' in instruction.filename else 'validation'
  examples = []
  for i in range(instruction.skip, instruction.skip + instruction.take):
    rng = np.random.default_rng([i, len(name)])
    image = rng.integers(0, 256, (*rng.integers(16, 49, 2), 3), dtype=np.uint8)
    examples.append(self.info.features.encode_example(
        {'image': image, 'label': i, 'file_name': f'{name}_{i}.JPEG'}))
  ds = tf.data.Dataset.from_tensor_slices({
      'image': tf.constant([e['image'] for e in examples], tf.string),
      'label': tf.constant([e['label'] for e in examples], tf.int64),
      'file_name': tf.constant([str(e['file_name']) for e in examples], tf.string)})
  return ds.map(lambda ex: self.info.features.decode_example(ex, decoders=decoders))


@contextlib.contextmanager
def mocked(data_dir):
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir,
                              as_dataset_fn=fake_as_dataset):
    yield data_dir


def fixtures(splits):
  """Module-level fixtures for a test file: `metadata_dir` (split sizes written once per
  module) and `mock_imagenet` (the mock active; yields the data_dir).

    metadata_dir, mock_imagenet = imagenet_mock.fixtures({'train': 40, 'validation': 25})
  """
  @pytest.fixture(scope='module')
  def metadata_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    write_metadata(data_dir, splits)
    return data_dir

  @pytest.fixture
  def mock_imagenet(metadata_dir):  # pylint: disable=redefined-outer-name
    with mocked(metadata_dir) as data_dir:
      yield data_dir

  return metadata_dir, mock_imagenet
