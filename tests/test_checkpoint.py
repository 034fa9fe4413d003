"""Checkpoints in process: another model's checkpoint fails clearly; `init_from` an
earlier run or converted weights (params only, a head of other classes replaced)."""
import os

import jax
import numpy as np
import pytest
from flax import nnx


from stvit_jax.configs import quickstart  # noqa: E402
from stvit_jax.train import checkpoint  # noqa: E402
from stvit_jax import models, names
from stvit_jax.train import loop
from stvit_jax.weights import store

TINY = dict(embed_dim=16, num_heads=2, depth=3, num_base_layers=1)


def tiny_config(data_dir, **model):
  config = quickstart.get_config()
  for k, v in {**TINY, **model}.items():
    config.model[k] = v
  config.data.data_dir = data_dir
  config.data.prefetch = 1
  # With warmup_lr 0, step 0 trains with lr 0 (the checkpoint of step 1 holds the
  # initial params, bitwise); step 1 with the peak lr.
  config.total_steps, config.warmup_steps, config.optim.warmup_lr = 2, 1, 0.0
  config.checkpoint_every_steps, config.eval_every_steps = 1, 2
  config.batch_size, config.eval_batch_size = 16, 120
  return config


def params_of(workdir, step):
  raw = checkpoint.restore_on_host(os.path.join(workdir, 'checkpoints', str(step), 'params'))
  flat = names.flatten(raw['params'])
  return {k: np.asarray(v) for k, v in flat.items()}


@pytest.fixture(scope='module')
def earlier_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('earlier'))
  summary = loop.train_and_evaluate(tiny_config(data_dir), workdir)
  assert summary['final_step'] == 2 and summary['eval_num_examples'] == 360
  return workdir


def test_resuming_with_another_model_fails_clearly(earlier_run, data_dir):
  config = tiny_config(data_dir)
  config.model.name = 'deit_tiny'
  for k in ('num_base_layers', 'num_semantic', 'pooling', 'use_global_init', 'class_token',
            'layer_scale_init', 'stgm_depth'):
    del config.model[k]
  with pytest.raises(ValueError, match="written by model 'stvit_deit_tiny' but config.model."
                     "name is 'deit_tiny'"):
    loop.train_and_evaluate(config, earlier_run)
  wider = tiny_config(data_dir, embed_dim=32)
  with pytest.raises(ValueError, match=r'other parameter shapes \(\d+ differ: .*embed_dim|'
                     r'other parameter shapes'):
    loop.train_and_evaluate(wider, earlier_run)


def test_init_from_an_earlier_run(earlier_run, data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.init_from = earlier_run
  summary = loop.train_and_evaluate(config, tmp_path)
  assert summary['start_step'] == 0  # params only: a new run
  before, after = params_of(earlier_run, 2), params_of(str(tmp_path), 1)
  for k in before:
    np.testing.assert_array_equal(before[k], after[k], err_msg=k)
  other = tiny_config(data_dir, embed_dim=32)
  other.init_from = earlier_run
  with pytest.raises(ValueError, match='other parameter shapes'):
    loop.train_and_evaluate(other, tmp_path / 'other')


def test_relative_workdir_and_init_from(earlier_run, data_dir, tmp_path, monkeypatch):
  """`--workdir=runs/x` (the README's quickstart) and a relative init_from: orbax itself
  accepts only absolute paths."""
  monkeypatch.chdir(tmp_path)
  os.symlink(earlier_run, 'earlier')
  config = tiny_config(data_dir)
  config.init_from = 'earlier'
  summary = loop.train_and_evaluate(config, os.path.join('runs', 'relative'))
  assert summary['final_step'] == 2
  assert sorted(os.listdir(tmp_path / 'runs' / 'relative' / 'checkpoints')) == ['1', '2']
  np.testing.assert_array_equal(params_of('earlier', 2)['head/kernel'],
                                params_of(str(tmp_path / 'runs' / 'relative'), 1)['head/kernel'])


def test_absolute_keeps_urls():
  from stvit_jax import paths
  assert paths.absolute('gs://bucket/run') == 'gs://bucket/run'
  assert paths.absolute('runs/x') == os.path.join(os.getcwd(), 'runs', 'x')


def test_init_from_converted_weights_replaces_a_head_of_other_classes(data_dir, tmp_path):
  source = models.create('stvit_deit_tiny', seed=7, img_size=32, patch_size=4,
                         num_semantic=16, num_classes=5, **TINY)
  store.save_weights(tmp_path / 'converted', source, {'model': 'stvit_deit_tiny'})
  config = tiny_config(data_dir)
  config.init_from = str(tmp_path / 'converted')
  loop.train_and_evaluate(config, tmp_path / 'run')
  after = params_of(str(tmp_path / 'run'), 1)
  src = {'/'.join(map(str, p)): np.asarray(v.get_value())
         for p, v in nnx.to_flat_state(nnx.state(source, nnx.Param))}
  assert after['head/kernel'].shape == (16, 10) and src['head/kernel'].shape == (16, 5)
  for k, v in src.items():
    if not k.startswith('head/'):
      np.testing.assert_array_equal(v, after[k], err_msg=k)


def test_init_from_weights_of_another_model_fails(data_dir, tmp_path):
  source = models.create('deit_tiny', img_size=32, patch_size=4, num_classes=10,
                         embed_dim=16, num_heads=2, depth=3)
  store.save_weights(tmp_path / 'converted', source, {'model': 'deit_tiny'})
  config = tiny_config(data_dir)
  config.init_from = str(tmp_path / 'converted')
  with pytest.raises(ValueError, match='does not fit STViT'):
    loop.train_and_evaluate(config, tmp_path / 'run')


def test_describe_and_check_same_model():
  params = jax.eval_shape(lambda: nnx.state(models.create('deit_tiny', depth=1), nnx.Param))
  cfg = type('C', (), {'model': type('M', (), {'name': 'deit_tiny'})})
  meta = checkpoint.describe(cfg, params)
  assert meta['param_shapes']['head/kernel'] == [192, 1000]
  checkpoint.check_same_model(meta, meta, 'here')
  other = dict(meta, param_shapes=dict(meta['param_shapes'], **{'head/kernel': [192, 10]}))
  with pytest.raises(ValueError, match=r'head/kernel: checkpoint \[192, 10\] vs model '
                     r'\[192, 1000\]'):
    checkpoint.check_same_model(other, meta, 'here')
