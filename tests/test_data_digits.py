"""The embedded `stvit_digits` TFDS dataset: offline build, splits, pixels, quickstart path."""
import concurrent.futures

import numpy as np
import tensorflow_datasets as tfds

from stvit_jax.data import defaults
from stvit_jax.data.builders import digits
from stvit_jax.data import pipeline


def test_builds_offline_with_fixed_split(data_dir):
  builder = tfds.builder(digits.NAME, data_dir=data_dir)  # registered under its name
  assert builder.is_prepared()
  info = builder.info
  assert info.features['label'].num_classes == 10
  assert info.splits['train'].num_examples == 1437 and info.splits['test'].num_examples == 360
  ds = tfds.as_numpy(builder.as_dataset(split='train+test', batch_size=-1))
  images, labels, index = ds['image'], ds['label'], ds['index']
  assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
  assert images.min() == 0 and images.max() == 255
  assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
  assert 20 < images.mean() < 100  # dark background, bright strokes
  assert sorted(index.tolist()) == list(range(1797))  # disjoint splits covering all
  _, arrays_labels = digits.load_arrays()
  np.testing.assert_array_equal(labels, arrays_labels[index])
  test_labels = tfds.as_numpy(builder.as_dataset(split='test', batch_size=-1))['label']
  test_counts = np.bincount(test_labels, minlength=10)
  assert test_counts.min() >= 35 and test_counts.max() <= 37  # stratified


def test_concurrent_first_use_builds_once(tmp_path, monkeypatch):
  builds = []
  real_build = digits._build
  monkeypatch.setattr(digits, '_build', lambda b: (builds.append(1), real_build(b)))
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    builders = list(pool.map(lambda _: digits.prepared_builder(str(tmp_path)), range(3)))
  assert len(builds) == 1
  assert all(b.info.splits['train'].num_examples == 1437 for b in builders)


def test_quickstart_pipeline(data_dir):
  cfg = defaults.data_config('stvit_digits')
  cfg.data_dir = data_dir
  cfg.normalize_on = 'host'  # float32 batches from tf.data (uint8 ones: test_data_imagenet)
  info = pipeline.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 1437, 360)
  assert pipeline.steps_per_epoch(cfg, global_batch_size=64) == 1437 // 64
  it = pipeline.train_iterator(cfg, global_batch_size=64, seed=0, start_step=23)
  batch = next(it)  # epoch 1, step 1: from the in-memory cache, one batch skipped
  assert batch['image'].shape == (64, 32, 32, 3) and batch['image'].dtype == np.float32
  assert np.isfinite(batch['image']).all() and batch['label'].dtype == np.int32
  from_start = pipeline.train_iterator(cfg, global_batch_size=64, seed=0)
  reference = [next(from_start) for _ in range(24)][23]
  np.testing.assert_array_equal(batch['image'], reference['image'])
  np.testing.assert_array_equal(batch['label'], reference['label'])
  evals = list(pipeline.eval_iterator(cfg, global_batch_size=100))
  assert len(evals) == 4 and sum(b['mask'].sum() for b in evals) == 360
  assert np.bincount(np.concatenate([b['label'][b['mask'] > 0] for b in evals])).min() >= 35
