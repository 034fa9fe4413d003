"""The imagenet2012 input pipeline on the real TFDS builder under `tfds.testing.mock_data`
(tests/imagenet_mock.py: small JPEGs of random sizes, label = index in the split)."""

import jax
import numpy as np
import pytest

import imagenet_mock
from stvit_jax.data import defaults
from stvit_jax.data import device_augment
from stvit_jax.data import pipeline
from stvit_jax.data import preprocess

NUM = {'train': 37, 'validation': 23}
SIZE = 64  # image_size for the tests; the mock's JPEGs are 16..48 px


metadata_dir, mock_imagenet = imagenet_mock.fixtures(NUM)


@pytest.fixture
def cfg():
  c = defaults.data_config()
  c.image_size = SIZE
  c.shuffle_buffer = 16
  c.prefetch = 1
  return c


def test_dataset_info(mock_imagenet, cfg):
  info = pipeline.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (1000, 37, 23)
  assert pipeline.steps_per_epoch(cfg, global_batch_size=8) == 37 // 8
  assert pipeline.steps_per_epoch(cfg, global_batch_size=8, process_count=2) == (37 // 2) // 4


def test_train_batches_shape_dtype_range(mock_imagenet, cfg):
  cfg.normalize_on = 'host'  # float32 batches, normalised in tf.data
  cfg.reprob = 0.0  # without erasing noise the normalised range is exact
  batch = next(pipeline.train_iterator(cfg, global_batch_size=8, seed=0))
  assert batch['image'].shape == (8, SIZE, SIZE, 3) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  lo = (0 - np.array(cfg.mean)) / np.array(cfg.std)
  hi = (1 - np.array(cfg.mean)) / np.array(cfg.std)
  assert np.all(batch['image'] >= lo - 1e-5) and np.all(batch['image'] <= hi + 1e-5)
  assert batch['image'].std() > 0.1
  assert len(set(batch['label'].tolist())) == 8 and batch['label'].max() < NUM['train']


@pytest.mark.parametrize('split', ['train', 'eval'])
def test_uint8_batches_normalised_on_device_equal_the_host_path(mock_imagenet, cfg, split):
  cfg.reprob = 0.0  # erasing differs by design: tf.data's noise vs the step's
  def first(c):
    if split == 'train':
      return next(pipeline.train_iterator(c, global_batch_size=8, seed=0))
    return next(pipeline.eval_iterator(c, global_batch_size=8))
  pixels = first(cfg)
  assert pixels['image'].dtype == np.uint8 and pixels['image'].shape == (8, SIZE, SIZE, 3)
  spec = pipeline.batch_spec(cfg, 8)
  assert {k: (v.shape, v.dtype) for k, v in pixels.items() if k in spec} == spec
  host = cfg.copy_and_resolve_references()
  host.normalize_on = 'host'
  floats = first(host)
  assert pipeline.batch_spec(host, 8)['image'][1] == floats['image'].dtype == np.float32
  np.testing.assert_array_equal(pixels['label'], floats['label'])
  on_device = device_augment.eval_images(jax.numpy.asarray(pixels['image']), cfg)
  np.testing.assert_allclose(on_device, floats['image'], rtol=0, atol=1e-5)
  # and both are the published ImageNet normalisation (constants written as numbers here)
  known = (pixels['image'] / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(floats['image'], known, rtol=0, atol=1e-5)


def test_resume_gives_bitwise_identical_batches(mock_imagenet, cfg):
  # 4 steps per epoch: steps 0..5 cross an epoch boundary. Full default recipe.
  it = pipeline.train_iterator(cfg, global_batch_size=8, seed=3)
  ref = [next(it) for _ in range(6)]
  for start in (2, 5):
    resumed = next(pipeline.train_iterator(cfg, global_batch_size=8, seed=3, start_step=start))
    for key in ('image', 'label'):
      np.testing.assert_array_equal(resumed[key], ref[start][key])
  # epochs are reshuffled and re-augmented; seeds matter
  assert not np.array_equal(ref[0]['label'], ref[4]['label'])


def test_train_process_shares_are_disjoint(mock_imagenet, cfg):
  cfg.randaugment = ''
  seen = [np.concatenate([next(it)['label'] for _ in range(4)])
          for it in (pipeline.train_iterator(cfg, global_batch_size=8, seed=0,
                                             process_index=p, process_count=2)
                     for p in range(2))]
  assert set(seen[0]).isdisjoint(seen[1])
  assert set(seen[0]) <= set(range(18)) and set(seen[1]) <= set(range(18, 36))
  other = next(pipeline.train_iterator(cfg, global_batch_size=8, seed=1, process_index=0,
                                       process_count=2))
  assert not np.array_equal(other['label'], seen[0][:4])  # the seed drives the order


@pytest.mark.parametrize('process_count,global_batch', [(1, 5), (2, 10), (2, 6)])
def test_eval_counts_every_example_once(mock_imagenet, cfg, process_count, global_batch):
  per_process = []
  for p in range(process_count):
    per_process.append(list(pipeline.eval_iterator(
        cfg, global_batch_size=global_batch, process_index=p, process_count=process_count)))
  assert len({len(batches) for batches in per_process}) == 1  # no process waits alone
  labels, mask_sum = [], 0.0
  for batches in per_process:
    for b in batches:
      assert b['image'].shape == (global_batch // process_count, SIZE, SIZE, 3)
      assert b['mask'].dtype == np.float32
      labels += b['label'][b['mask'] == 1].tolist()
      mask_sum += b['mask'].sum()
  assert mask_sum == NUM['validation']
  assert sorted(labels) == list(range(NUM['validation']))


# The first validation images of the mock, and the centre square that Resize(floor(64 /
# 0.875) = 73) + CenterCrop(64) keeps of each, worked out by hand: side = round(short *
# 64 / 73), offsets floor((long - side) / 2). E.g. 25x32: 25 * 64 / 73 = 21.92 -> 22,
# top (25 - 22) // 2 = 1, left (32 - 22) // 2 = 5.
EVAL_WINDOWS = {0: ((25, 32), (1, 5, 22)), 1: ((22, 42), (1, 11, 19)),
                2: ((41, 43), (2, 3, 36)), 3: ((18, 41), (1, 12, 16))}


def test_eval_is_the_centre_crop_worked_out_by_hand(mock_imagenet, cfg):
  import tensorflow as tf
  import tensorflow_datasets as tfds
  batch = next(pipeline.eval_iterator(cfg, global_batch_size=4))
  raw = tfds.builder('imagenet2012', data_dir=mock_imagenet).as_dataset(
      split='validation', decoders={'image': tfds.decode.SkipDecoding()})
  for example in raw.take(4):
    i = int(example['label'])
    (h, w), (top, left, side) = EVAL_WINDOWS[i]
    full = tf.io.decode_jpeg(example['image'], channels=3, dct_method=preprocess.JPEG_DCT)
    assert tuple(full.shape[:2]) == (h, w)
    window = full[top:top + side, left:left + side]
    expected = tf.image.resize(tf.cast(window, tf.float32), [SIZE, SIZE], 'bicubic',
                               antialias=True)
    expected = np.clip(np.round(expected.numpy()), 0, 255)
    (row,) = np.flatnonzero(batch['label'] == i)
    got = batch['image'][row].astype(np.float64)
    # decode_and_crop_jpeg vs a full decode then a slice, the same IDCT: the same pixels
    assert np.abs(got - expected).mean() < 1.0, (i, np.abs(got - expected).mean())
    # a window one pixel off is much further away than that
    shifted = full[top + 1:top + 1 + side, left + 1:left + 1 + side]
    off = tf.image.resize(tf.cast(shifted, tf.float32), [SIZE, SIZE], 'bicubic', antialias=True)
    assert np.abs(got - np.clip(np.round(off.numpy()), 0, 255)).mean() > 3 * np.abs(got - expected).mean() + 1


def test_bad_config_fields_are_named(mock_imagenet, cfg):
  with pytest.raises(ValueError, match='eval_split.*available'):
    cfg.eval_split = 'val'
    pipeline.dataset_info(cfg)
  cfg.eval_split = 'validation'
  with pytest.raises(ValueError, match='global_batch_size=7.*process count'):
    pipeline.eval_iterator(cfg, global_batch_size=7, process_index=0, process_count=2)
  cfg.crop_pct = 1.5
  with pytest.raises(ValueError, match=r'data\.crop_pct=1\.5'):
    pipeline.train_iterator(cfg, global_batch_size=8, seed=0)


def test_missing_imagenet_says_how_to_prepare(tmp_path):
  cfg = defaults.data_config()
  cfg.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError) as e:
    pipeline.dataset_info(cfg)
  msg = str(e.value)
  assert str(tmp_path) in msg and 'data_dir' in msg and 'manual_dir' in msg
  assert 'ILSVRC2012_img_train.tar' in msg and 'tfds build imagenet2012' in msg
