"""Video input pipeline: clip sampling, one crop and flip per clip, views, shares, resume."""
import collections
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from stvit_jax.data import datasets, defaults
from stvit_jax.data.builders import kinetics
from stvit_jax.data.builders import moving_digits
from stvit_jax.data import pipeline
from stvit_jax.data import video
import video_fixtures


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('manual'))
  video_fixtures.make_kinetics_dir(root)
  out = str(tmp_path_factory.mktemp('tfds'))
  kinetics.prepare(video_fixtures.TinyVideos, root, data_dir=out, videos_per_shard=3)
  return out


def _frame_index(clip):
  """Frame indices from the first grey block (top-left) of each frame of a (T, S, S, 3) clip."""
  return np.round((clip[:, 1, 1, 0] - 10) / 18).astype(int)


def test_train_indices_stride_offset_and_looping():
  for seed in range(20):
    idx = video.train_indices(100, 8, 2, tf.constant([seed, 1], tf.int64)).numpy()
    assert (np.diff(idx) == 2).all() and 0 <= idx[0] <= 100 - 15
  offsets = {int(video.train_indices(100, 8, 2, tf.constant([s, 1], tf.int64))[0])
             for s in range(50)}
  assert len(offsets) > 20  # a random offset
  short = video.train_indices(5, 8, 2, tf.constant([0, 1], tf.int64)).numpy()
  np.testing.assert_array_equal(short, [0, 2, 4, 1, 3, 0, 2, 4])  # loops a short video


def test_eval_indices_evenly_spaced_clips():
  idx = video.eval_indices(100, 8, 2, 4).numpy()
  # mmaction test mode: interval (100 - 15 + 1) / 4 = 21.5, starts int(21.5 k + 10.75)
  np.testing.assert_array_equal(idx[:, 0], [10, 32, 53, 75])
  assert (np.diff(idx, axis=1) == 2).all()
  short = video.eval_indices(10, 8, 2, 4).numpy()
  np.testing.assert_array_equal(short, np.tile([0, 2, 4, 6, 8, 0, 2, 4], (4, 1)))


def test_train_clips_sample_strided_frames_of_the_right_video(data_dir):
  cfg = video_fixtures.video_cfg(data_dir, crop_scale=(1.0, 1.0), crop_ratio=(4 / 3, 4 / 3),
                                 hflip=0.0, image_size=32)
  batches = video.train_iterator(cfg, global_batch_size=7, seed=0, process_count=1)
  for _ in range(3):
    batch = next(batches)
    assert batch['video'].shape == (7, 4, 32, 32, 3) and batch['video'].dtype == np.float32
    for clip, label in zip(batch['video'], batch['label']):
      assert round((clip[0, 1, 12, 1] - 30) / 60) == label  # the second block: this video
      steps = np.diff(_frame_index(clip))
      # stride 2, or a wrap-around (looping) for videos shorter than 7 frames
      assert all(s == 2 or s < 0 for s in steps), _frame_index(clip)


def test_one_crop_box_and_one_flip_for_all_frames():
  cfg = defaults.video_data_config('kinetics400')
  cfg.update(image_size=16, num_frames=4, frame_stride=1)
  rng = np.random.default_rng(0)
  picture = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(picture).save(buf, format='JPEG', quality=95)
  record = {'video': tf.constant([buf.getvalue()] * 6), 'label': tf.constant(0, tf.int64)}
  prep = video.train_transform(cfg)
  clips = [prep(record, tf.constant([s, 0], tf.int64))['video'].numpy() for s in range(12)]
  for clip in clips:  # identical frames stay identical: the same box and flip throughout
    np.testing.assert_array_equal(clip, np.broadcast_to(clip[:1], clip.shape))
  assert len({c[0].tobytes() for c in clips}) == 12  # yet each clip has its own box
  flipped = [np.abs(c[0] - c[0][:, ::-1]).max() > 0 for c in clips]
  assert any(flipped)


def test_eval_views_count_and_every_video_once_over_processes(data_dir):
  cfg = video_fixtures.video_cfg(data_dir)
  builder = datasets.builder(cfg, 'video')
  expected = collections.Counter(
      int(ex['label']) for ex in builder.as_dataset(split='validation').as_numpy_iterator())
  seen, batch_counts = collections.Counter(), []
  for p in range(3):
    batches = list(video.eval_iterator(cfg, global_batch_size=6, process_index=p,
                                       process_count=3))
    batch_counts.append(len(batches))
    for b in batches:
      assert b['video'].shape == (2, 2 * 3, 4, 16, 16, 3)  # 2 clips x 3 crops
      seen.update(int(l) for l, m in zip(b['label'], b['mask']) if m == 1)
  assert seen == expected and sum(seen.values()) == 5
  assert len(set(batch_counts)) == 1  # every process runs the same number of eval steps


def test_eval_crops_left_centre_right(data_dir):
  cfg = video_fixtures.video_cfg(data_dir, image_size=24, eval_clips=1, num_frames=2)
  builder = datasets.builder(cfg, 'video')
  record = next(iter(pipeline._read(builder, 'validation[1:2]')))  # pylint: disable=protected-access
  views = video.eval_views(cfg)(record).numpy()
  frames = np.stack([tf.io.decode_jpeg(f).numpy() for f in record['video'].numpy()])
  idx = video.eval_indices(len(frames), 2, 2, 1).numpy()[0]
  for view, left in zip(views, (0, 4, 8)):  # 24x32 frames, 24x24 crops
    np.testing.assert_allclose(view, frames[idx, :, left:left + 24], atol=1)


def test_resume_gives_the_same_batches(data_dir):
  cfg = video_fixtures.video_cfg(data_dir)
  full = video.train_iterator(cfg, global_batch_size=2, seed=3, process_count=1)
  first = [next(full) for _ in range(6)]  # 3 steps per epoch: crosses an epoch boundary
  resumed = video.train_iterator(cfg, global_batch_size=2, seed=3, start_step=4,
                                 process_count=1)
  for want in first[4:]:
    got = next(resumed)
    np.testing.assert_array_equal(got['video'], want['video'])
    np.testing.assert_array_equal(got['label'], want['label'])


def test_per_process_train_shares_are_disjoint(data_dir):
  # 16 frames, stride 1: every train video (5-13 frames) loops, and where the frame
  # index wraps to 0 tells its length, which identifies it.
  cfg = video_fixtures.video_cfg(data_dir, num_frames=16, frame_stride=1, crop_scale=(1.0, 1.0),
                                 crop_ratio=(4 / 3, 4 / 3), hflip=0.0, image_size=32)
  assert video.steps_per_epoch(cfg, global_batch_size=6, process_count=2) == 1
  lengths = []
  for p in range(2):
    batch = next(video.train_iterator(cfg, global_batch_size=6, seed=0, process_index=p,
                                      process_count=2))
    lengths.append({int(np.flatnonzero(np.diff(_frame_index(c)) < 0)[0]) + 1
                    for c in batch['video']})
  assert len(lengths[0]) == len(lengths[1]) == 3  # 7 videos: 3 each, one dropped
  assert not lengths[0] & lengths[1]
  assert lengths[0] | lengths[1] <= {5, 8, 9, 10, 11, 12, 13}


def test_modalities_do_not_mix(data_dir):
  with pytest.raises(ValueError, match="'imagenet2012' is an image dataset.*video model"):
    datasets.builder(video_fixtures.video_cfg(None, name='imagenet2012'), 'video')
  image_cfg = defaults.data_config()
  image_cfg.update(name='kinetics400')
  with pytest.raises(ValueError, match='video dataset.*image model'):
    datasets.builder(image_cfg)
  image_cfg.update(name='tiny_videos', data_dir=data_dir)
  with pytest.raises(ValueError, match='holds videos.*image model'):
    datasets.builder(image_cfg)


def test_unprepared_kinetics_names_the_conversion_command(tmp_path):
  with pytest.raises(FileNotFoundError, match='python -m stvit_jax.data.builders.kinetics --name '
                     'kinetics400'):
    datasets.builder(video_fixtures.video_cfg(str(tmp_path), name='kinetics400'), 'video')


def test_moving_digits_need_motion():
  """One frame says nothing about the class; two frames say everything."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(1)
  train = list(moving_digits.examples(640, rng))
  test = list(moving_digits.examples(320, rng))
  classes = moving_digits.CLASSES

  def frame(examples, t):
    return np.stack([f[t].mean(-1).ravel() / 255 for _, f in examples])

  labels = lambda ex: np.array([classes.index(n) for n, _ in ex])  # pylint: disable=unnecessary-lambda-assignment
  single = linear_model.LogisticRegression(max_iter=300).fit(frame(train, 5), labels(train))
  single_acc = (single.predict(frame(test, 5)) == labels(test)).mean()
  assert single_acc < 0.2  # chance is 1/8

  # Two frames 2 apart: the shift that best aligns them is the class.
  def by_shift(frames):
    a, b = frames[4].mean(-1), frames[6].mean(-1)
    scores = []
    for name in classes:
      d, s = name.split(', ')
      v = np.array(moving_digits.DIRECTIONS[d]) * moving_digits.SPEEDS[s] * 2
      scores.append((np.roll(a, tuple(v), (0, 1)) * b).sum())
    return int(np.argmax(scores))

  motion_acc = np.mean([by_shift(f) == classes.index(n) for n, f in test])
  assert motion_acc > 0.95
