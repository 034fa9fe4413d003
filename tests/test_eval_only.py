"""Evaluation-only runs (config.mode='eval') of pretrained weights on mocked ImageNet.

The weights: a tiny STViT-R-Swin-S (the authors' checkpoint names and layouts, random
values) served by the local server as the catalogue entry of stvit_r_swin_small, with
the real entry's expected 82.7 top-1. The run goes through configs/swin_s.py, the real
download / conversion / cache code and the real ImageNet eval pipeline.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import imagenet_mock  # noqa: E402
from stvit_jax.configs import swin_s  # noqa: E402
from stvit_jax.train import eval_only  # noqa: E402
import stvit_jax
from stvit_jax import models
from stvit_jax.data import device_augment, pipeline  # noqa: E402
from stvit_jax.weights import catalogue  # noqa: E402
from weights_server import Server, source_state_dict  # noqa: E402

pytestmark = pytest.mark.slow  # compiles a 224 px eval step; one test runs a subprocess
TINY = {'embed_dim': 16, 'depths': (1, 1, 6, 1), 'num_heads': (1, 2, 2, 2)}
metadata_dir, mock_imagenet = imagenet_mock.fixtures({'train': 32, 'validation': 25})


@pytest.fixture
def served_weights(tmp_path, monkeypatch):
  from safetensors.numpy import save
  with Server() as server:
    server.files['stvit_r_swin_s_tiny.safetensors'] = save(
        source_state_dict('stvit_r_swin_small', **TINY))
    entry = {'address': server.file_url('stvit_r_swin_s_tiny.safetensors'),
             'format': 'safetensors', 'top1': catalogue.BUILTIN['stvit_r_swin_small'].top1,
             'dataset': 'imagenet2012 validation, 224 px', 'top1_source': 'test',
             'options': {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}}
    (tmp_path / 'catalogue.json').write_text(json.dumps({'stvit_r_swin_small': entry}))
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(tmp_path / 'catalogue.json'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    yield server


def test_eval_mode_reports_measured_beside_expected(mock_imagenet, served_weights, tmp_path):
  config = swin_s.get_config('runlocal')  # validation[:20], batch 8: one padded batch
  for k, v in TINY.items():
    config.model[k] = v
  config.data.data_dir = mock_imagenet
  config.init_from, config.mode = 'pretrained', 'eval'
  record = eval_only.run(config, tmp_path / 'run')

  assert record['num_examples'] == 20 and record['eval_split'] == 'validation[:20]'
  assert record['expected_top1'] == 0.827 and record['weights']['model'] == 'stvit_r_swin_small'
  assert record['weights']['source']['address'] == served_weights.file_url(
      'stvit_r_swin_s_tiny.safetensors')
  saved = json.load(open(tmp_path / 'run' / 'eval.json'))
  assert saved['top1'] == record['top1'] and saved['expected_top1'] == 0.827
  (row,) = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert row['split'] == 'eval' and row['step'] == 0 and row['num_examples'] == 20
  assert not (tmp_path / 'run' / 'checkpoints').exists()  # nothing trained, nothing saved

  # The same weights through stvit_jax.create(pretrained=True) on the same batches.
  model = stvit_jax.create('stvit_r_swin_small', pretrained=True, **TINY)
  losses, hits = [], []
  for batch in pipeline.eval_iterator(config.data, global_batch_size=8):
    images = device_augment.eval_images(batch['image'], config.data)  # uint8 -> normalised
    logits = np.asarray(model(images, train=False)[0], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                                                           keepdims=True)) \
        - logits.max(1, keepdims=True)
    keep = batch['mask'] > 0
    losses += list(-logp[keep, batch['label'][keep]])
    hits += list(logits[keep].argmax(1) == batch['label'][keep])
  assert len(losses) == 20
  np.testing.assert_allclose(record['loss'], np.mean(losses), rtol=1e-4)
  assert record['top1'] == np.mean(hits)


def test_eval_mode_without_init_from_is_one_message_and_exit_2(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  out = subprocess.run(
      [sys.executable, '-m', 'stvit_jax.main', '--config=configs/swin_s.py:runlocal',
       '--config.mode=eval', f'--workdir={tmp_path / "run"}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "error: config.mode='eval' evaluates the weights of config.init_from" in out.stderr
  assert 'Traceback' not in out.stderr
  assert not (tmp_path / 'run').exists()  # nothing written before the inputs are valid


def test_eval_mode_on_video_views(tmp_path):
  """A video model: the video pipeline's clips x crops views, each video counted once."""
  from flax import nnx
  from stvit_jax.train import defaults
  from stvit_jax.weights import store
  from stvit_jax.data.builders import kinetics
  import video_fixtures
  root, data_dir = tmp_path / 'manual', tmp_path / 'tfds'
  os.makedirs(root)
  video_fixtures.make_kinetics_dir(str(root))
  kinetics.prepare(video_fixtures.TinyVideos, str(root), data_dir=str(data_dir),
                   videos_per_shard=3)
  tiny = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=(2, 2, 2),
              patch_size=(2, 4, 4))
  config = defaults.video_base('video_swin_tiny', dataset='kinetics400', num_classes=3,
                             img_size=16, num_frames=4, **tiny)
  config.data.update(name='tiny_videos', data_dir=str(data_dir), eval_clips=2, eval_crops=3,
                     prefetch=1)
  config.eval_batch_size = 2
  options = dict(tiny, num_classes=3, img_size=16, num_frames=4)
  model = nnx.eval_shape(lambda: models.create('video_swin_tiny', **options))
  rng = np.random.default_rng(0)
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    var.set_value((0.1 * rng.standard_normal(var.get_value().shape)).astype(np.float32))
  store.save_weights(tmp_path / 'w', model, {'model': 'video_swin_tiny', 'num_classes': 3,
                                                'options': options})
  config.init_from, config.mode = str(tmp_path / 'w'), 'eval'
  record = eval_only.run(config, tmp_path / 'run')
  # 5 decodable validation videos (one file is corrupt), 2 x 3 views each
  assert record['num_examples'] == 5 and record['expected_top1'] is None
  assert 0 <= record['top1'] <= record['top5'] <= 1 and np.isfinite(record['loss'])
  assert json.load(open(tmp_path / 'run' / 'eval.json'))['num_examples'] == 5
