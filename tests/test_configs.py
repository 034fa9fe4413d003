"""Config files: variants, the recipe's numbers, epochs -> steps, the decay mask."""
import importlib
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from stvit_jax import models  # noqa: E402
from stvit_jax.train import optim
from stvit_jax.train import functional
from stvit_jax.train import trainer

FAMILIES = {  # file -> {variant: model}
    'deit_t': {'': 'stvit_deit_tiny', 'baseline': 'deit_tiny'},
    'deit_s': {'': 'stvit_deit_small', 'baseline': 'deit_small'},
    'deit_b': {'': 'stvit_deit_base', 'baseline': 'deit_base'},
    'swin_t': {'': 'stvit_r_swin_tiny', 'baseline': 'swin_tiny', 'local': 'stvit_swin_tiny'},
    'swin_s': {'': 'stvit_r_swin_small', 'baseline': 'swin_small', 'local': 'stvit_swin_small'},
    'swin_b': {'': 'stvit_r_swin_base', 'baseline': 'swin_base', 'local': 'stvit_swin_base'},
}


def load(name, arg=None):
  module = importlib.import_module(f'configs.{name}')
  return module.get_config(arg) if arg is not None else module.get_config()


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_variants_pick_the_model_and_keep_the_recipe(name):
  for variant, model in FAMILIES[name].items():
    config = load(name, variant)
    assert config.model.name == model
    assert set(config.model) - {'name', 'dtype'} == set(models.options(model)) - {'dtype'}
    assert (config.batch_size, config.total_epochs, config.warmup_epochs) == (1024, 300, 20)
    assert (config.optim.lr, config.optim.weight_decay, config.optim.grad_clip_norm) == (
        5e-4, 0.05, 5.0)
    assert config.data.name == 'imagenet2012' and config.model.img_size == 224
    doc = sys.modules[f'configs.{name}'].__doc__
    assert f'--config=configs/{name}.py' in doc and 'top-1' in doc
    small = load(name, ','.join(filter(None, [variant, 'runlocal'])))
    assert small.model.name == model and small.batch_size == 8
    assert small.data.train_split == 'train[:32]'


def test_drop_path_follows_the_paper():
  assert load('deit_s').model.drop_path_rate == 0.1
  assert load('swin_s').model.drop_path_rate == 0.3
  assert load('swin_b').model.drop_path_rate == 0.5


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match=r"unknown config variant\(s\) \['basline'\].*baseline"):
    load('deit_s', 'basline')
  with pytest.raises(ValueError, match='choose one'):
    load('swin_s', 'baseline,local')


def test_quickstart_is_small():
  config = load('quickstart')
  assert config.data.name == 'stvit_digits' and config.model.num_classes == 10
  model = nnx.eval_shape(lambda: functional.create_model(config))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert 1e5 < count < 1e6
  assert config.model.num_semantic == 16


@pytest.mark.slow
def test_unknown_config_key_fails_naming_the_field(tmp_path):
  cmd = [sys.executable, '-m', 'stvit_jax.main', '--config=configs/quickstart.py',
         f'--workdir={tmp_path}', '--config.optim.lrate=0.1']
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "unknown config field --config.optim.lrate: config.optim has no 'lrate'" in out.stderr
  assert 'grad_clip_norm' in out.stderr  # lists the valid fields


def test_epochs_convert_to_steps_in_one_place():
  config = load('deit_s')
  steps = trainer.schedule_steps(config, steps_per_epoch=1251)
  assert steps.total == 300 * 1251 and steps.warmup == 20 * 1251
  assert steps.eval_every == 10 * 1251 and steps.checkpoint_every == 1251
  config.total_steps, config.warmup_steps = 100, 0
  steps = trainer.schedule_steps(config, steps_per_epoch=1251)
  assert (steps.total, steps.warmup) == (100, 0)


def test_learning_rate_schedule():
  config = load('deit_s')  # batch 1024 -> peak 1e-3
  sched = optim.learning_rate(config, total_steps=1000, warmup_steps=100)
  np.testing.assert_allclose(sched(0), 1e-6, rtol=1e-4)
  np.testing.assert_allclose(sched(100), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(sched(1000), 1e-5, rtol=1e-5)
  assert 1e-5 < sched(550) < 1e-3
  with pytest.raises(ValueError, match='warm-up'):
    optim.learning_rate(config, total_steps=10, warmup_steps=10)


@pytest.mark.parametrize('name,kw', [
    ('stvit_deit_tiny', dict(depth=3, num_base_layers=1, class_token=True)),
    ('deit_tiny_distilled', dict(depth=1)),
    ('stvit_r_swin_tiny', dict(embed_dim=16, depths=(1, 1, 6, 1), num_heads=(1, 1, 1, 1),
                               use_global_init=True)),
])
def test_decay_mask(name, kw):
  model = nnx.eval_shape(lambda: models.create(name, **kw))
  params = nnx.state(model, nnx.Param)
  mask = optim.decay_mask(params)
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in p if getattr(k, 'name', None) != 'value'): m
          for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  no_decay = {k for k, m in flat.items() if not m}
  for key, decays in flat.items():
    leaf = key.split('/')[-1]
    if leaf in ('bias', 'scale') or 'layer_scale' in leaf or leaf in (
        'pos_embed', 'cls_token', 'dist_token', 'global_init', 'relative_position_bias_table'):
      assert not decays, key
    if leaf == 'kernel':
      assert decays, key
  assert any('global_init' in k for k in no_decay) or name.startswith('deit')
  # The optimizer applies the mask on an nnx.State: with zero gradients AdamW's update is
  # the decoupled decay alone, -lr * wd * p on decayed leaves and exactly 0 elsewhere.
  config = load('deit_s')
  tx = optim.make(config, 1e-3)
  ones = jax.tree.map(lambda x: np.ones(x.shape, np.float32), params)
  updates, _ = tx.update(jax.tree.map(np.zeros_like, ones), tx.init(ones), ones)
  expected = -1e-3 * config.optim.weight_decay
  assert config.optim.weight_decay > 0
  for (path, u), m in zip(jax.tree_util.tree_leaves_with_path(updates),
                          jax.tree_util.tree_leaves(mask)):
    np.testing.assert_allclose(np.asarray(u), expected if m else 0.0, rtol=1e-6, err_msg=str(path))
