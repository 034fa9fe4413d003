"""The trainer on video: a registry video model trained and evaluated (clips x crops views)
from a converted Kinetics-layout folder, and the modality checks."""
import json
import os

import numpy as np
import pytest


from stvit_jax.train import defaults  # noqa: E402
from stvit_jax.train import loop  # noqa: E402
from stvit_jax.data.builders import kinetics  # noqa: E402
import video_fixtures  # noqa: E402

TINY_VIDEO_SWIN = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                       window_size=(2, 2, 2), patch_size=(2, 4, 4))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('manual'))
  video_fixtures.make_kinetics_dir(root)
  out = str(tmp_path_factory.mktemp('tfds'))
  kinetics.prepare(video_fixtures.TinyVideos, root, data_dir=out, videos_per_shard=3)
  return out


def video_config(data_dir, model='video_swin_tiny'):
  config = defaults.video_base(model, dataset='kinetics400', num_classes=3, img_size=16,
                             num_frames=4, **TINY_VIDEO_SWIN)
  config.data.update(name='tiny_videos', data_dir=data_dir, eval_clips=2, eval_crops=3,
                     shuffle_buffer=8, prefetch=1)
  config.batch_size, config.eval_batch_size = 2, 2
  config.total_steps, config.warmup_steps, config.eval_every_steps = 4, 1, 4
  config.checkpoint_every_steps, config.log_every_steps = 4, 1
  return config


@pytest.mark.slow
def test_video_model_trains_and_evaluates_views_from_converted_kinetics(data_dir, tmp_path):
  summary = loop.train_and_evaluate(video_config(data_dir), str(tmp_path))
  assert summary['final_step'] == 4 and summary['model'] == 'video_swin_tiny'
  # 5 decodable validation videos (one file is corrupt), 2 x 3 views each, batches of 2
  # with one padding row: each video counted once
  assert summary['eval_num_examples'] == 5
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  losses = [r['loss'] for r in rows if r['split'] == 'train']
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert np.isclose(losses[0], np.log(3), atol=0.5)  # 3 classes, fresh head


def test_image_dataset_for_a_video_model_and_the_reverse(data_dir, tmp_path):
  config = video_config(data_dir)
  config.data.name = 'imagenet2012'
  with pytest.raises(ValueError, match="'imagenet2012' is an image dataset.*video model"):
    loop.train_and_evaluate(config, str(tmp_path / 'a'))
  image = defaults.base('deit_tiny', dataset='imagenet2012', num_classes=3, img_size=16,
                      patch_size=8)
  image.data.update(name='tiny_videos', data_dir=data_dir)
  with pytest.raises(ValueError, match='holds videos.*image model'):
    loop.train_and_evaluate(image, str(tmp_path / 'b'))
  assert not os.path.exists(tmp_path / 'a') and not os.path.exists(tmp_path / 'b')


def test_mixup_is_refused_for_video(data_dir, tmp_path):
  config = video_config(data_dir)
  config.mixup.prob = 1.0
  with pytest.raises(ValueError, match='config.mixup.prob=1.0.*video model'):
    loop.train_and_evaluate(config, str(tmp_path))
