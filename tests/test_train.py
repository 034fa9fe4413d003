"""The training loop: every family through the real ImageNet pipeline (mocked TFDS),
a loss that falls, gradient accumulation, exact eval counting, clear failures."""
import importlib
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest


import imagenet_mock  # noqa: E402
from stvit_jax.train import evaluate  # noqa: E402
from stvit_jax.runtime import sharding
from stvit_jax.train import functional
from stvit_jax.train import loop
from stvit_jax.train import trainer
from stvit_jax.data import pipeline  # noqa: E402

SPLITS = {'train': 40, 'validation': 25}

TINY_DEIT = dict(embed_dim=16, num_heads=2, depth=3, img_size=32, patch_size=8)
TINY_SWIN = dict(embed_dim=16, num_heads=(1, 2, 2, 2), window_size=7)
FAMILIES = {  # (config file, variant) -> model overrides
    'deit': ('deit_s', 'baseline', TINY_DEIT),
    'stvit_deit': ('deit_s', '', dict(TINY_DEIT, num_base_layers=1, num_semantic=4)),
    'swin': ('swin_t', 'baseline', dict(TINY_SWIN, depths=(1, 1, 1, 1), img_size=64,
                                        window_size=4)),
    # STViT-Swin's semantic stage is defined on the 14x14 grid of 224 inputs.
    'stvit_r_swin': ('swin_t', '', dict(TINY_SWIN, depths=(1, 1, 6, 1), img_size=224)),
    'stvit_swin': ('swin_t', 'local', dict(TINY_SWIN, depths=(1, 1, 3, 1), img_size=224)),
}


def get_config(name, variant=''):
  module = importlib.import_module(f'configs.{name}')
  return module.get_config(variant)


# ------------------------------------------------------------ mocked imagenet2012


metadata_dir, mock_imagenet = imagenet_mock.fixtures(SPLITS)


def shrink(config, model, **extra):
  for k, v in model.items():
    config.model[k] = v
  config.data.image_size = config.model.img_size
  config.data.prefetch = 1
  for k, v in extra.items():
    node, *path = k.split('.')
    target = config[node] if path else config
    target[path[-1] if path else node] = v
  return config


@pytest.mark.slow  # every family at 224 px: 94-146 s each on 2 cores
@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_family_trains_two_steps_on_imagenet_pipeline(family, mock_imagenet, tmp_path):
  name, variant, model = FAMILIES[family]
  config = shrink(get_config(name, ','.join(filter(None, [variant, 'runlocal']))), model)
  config.data.data_dir = mock_imagenet
  config.total_steps, config.warmup_steps = 2, 1
  # Spare the CPU: tracing TF RandAugment and compiling the eval step take ~10 s
  # each; one family covers RandAugment, the two DeiT families the eval.
  if family != 'deit':
    config.data.randaugment = ''
  if 'deit' not in family:
    config.eval_every_steps = 0  # no eval
  summary = loop.train_and_evaluate(config, tmp_path)
  assert summary['final_step'] == 2 and summary['model'] == config.model.name
  if 'deit' in family:  # validation[:20] at batch 8: 4 padding rows, not counted
    assert summary['eval_num_examples'] == 20 and 'eval_top1' in summary
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  losses = [r['loss'] for r in rows if r['split'] == 'train']
  assert len(losses) == 2 and all(np.isfinite(losses))
  assert np.isclose(losses[0], np.log(1000), atol=0.3)  # mixup + smoothing, near-uniform
  assert os.listdir(tmp_path / 'tensorboard')
  assert json.load(open(tmp_path / 'summary.json'))['final_step'] == 2


def _trainer(config, batch=16):
  """The trainer train_and_evaluate builds (trainer.build), on one device."""
  mesh = sharding.make_mesh(config, devices=jax.devices()[:1])
  return trainer.build(config, mesh, pipeline.batch_spec(config.data, batch),
                     steps_per_epoch=config.total_steps)


def _setup(config):
  trainer = _trainer(config)
  return trainer.initial_state(), trainer.train_step


def _tiny_quickstart(**extra):
  config = shrink(get_config('quickstart'), dict(embed_dim=32, num_heads=2, depth=3,
                                                 num_base_layers=1), **extra)
  config.total_steps, config.warmup_steps = 100, 2
  return config


def _fixed_batch(n=16):
  rng = np.random.default_rng(0)
  return {'image': rng.normal(size=(n, 32, 32, 3)).astype(np.float32),
          'label': rng.integers(0, 10, n).astype(np.int32)}


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_loss_falls_on_a_fixed_batch(dtype):
  state, step = _setup(_tiny_quickstart(**{'model.drop_path_rate': 0.1, 'model.dtype': dtype}))
  batch, losses = _fixed_batch(), []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.75 * losses[0], losses  # 16 random images memorised
  assert np.mean(losses[-5:]) < np.mean(losses[5:10]) < np.mean(losses[:5]), losses
  assert int(state['step']) == 30
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state['params']))


@pytest.mark.slow  # ~50 s on 2 cores
def test_gradient_accumulation_matches_the_full_batch():
  batch, out = _fixed_batch(), []
  for accum in (1, 4):
    state, step = _setup(_tiny_quickstart(**{'optim.grad_accum_steps': accum}))
    for _ in range(3):
      state, metrics = step(state, batch)
    out.append((float(metrics['loss']), state['params']))
  assert abs(out[0][0] - out[1][0]) < 1e-5
  for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_train_step_compiles_once_for_a_run_of_steps(monkeypatch):
  """Retrace guard: new batches, steps and random numbers reuse the one compiled step,
  with every option that adds state or control flow switched on."""
  make = trainer.make_train_step
  monkeypatch.setattr(trainer, 'make_train_step',
                      lambda *a, **k: chex.assert_max_traces(make(*a, **k), n=1))
  config = _tiny_quickstart(**{'optim.grad_accum_steps': 2, 'ema_decay': 0.9,
                               'model.drop_path_rate': 0.1, 'mixup.prob': 1.0})
  built = _trainer(config)
  state = built.initial_state()
  rng = np.random.default_rng(0)
  for i in range(4):  # a chex assertion error on the second trace
    batch = {k: (rng.integers(0, 10, s.shape) if k == 'label' else rng.normal(size=s.shape))
             .astype(s.dtype) for k, s in built.batch_spec.items()}
    state, metrics = built.train_step(state, sharding.to_global(batch, built.mesh))
    assert np.isfinite(float(metrics['loss']))
  assert int(state['step']) == 4 and 'ema' in state


def test_stochastic_depth_depends_on_the_step_rng():
  config = _tiny_quickstart(**{'model.drop_path_rate': 0.5})
  graphdef, params, stats, rngs = functional.split(functional.create_model(config))
  apply = jax.jit(functional.make_apply(graphdef, functional.placeholder_rngs(rngs)),
                  static_argnames='train')
  images = jnp.asarray(_fixed_batch()['image'])
  # scaled up: at init the residual branches (and so dropping them) barely matter
  variables = {'params': jax.tree.map(lambda x: x * 20, params), 'batch_stats': stats}
  a = apply(variables, images, train=True, rng=jax.random.key(1))[0]
  b = apply(variables, images, train=True, rng=jax.random.key(1))[0]
  c = apply(variables, images, train=True, rng=jax.random.key(2))[0]
  d = apply(variables, images, train=False)[0]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c) and not np.allclose(a, d)


@pytest.mark.parametrize('num_examples,batch', [(7, 4), (8, 4), (9, 4), (1, 4), (25, 8)])
def test_eval_counts_every_example_once(num_examples, batch):
  """Padded batches (mask 0) are not counted; top-1/top-5 are exact fractions."""
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'mesh': {'data': -1, 'fsdp': 1}}))
  labels = np.arange(num_examples, dtype=np.int32) % 10

  def batches():
    for start in range(0, num_examples, batch):
      lab = labels[start:start + batch]
      pad = batch - len(lab)
      yield {'image': np.pad(np.arange(start, start + len(lab), dtype=np.float32), (0, pad)),
             'label': np.pad(lab, (0, pad)),
             'mask': np.pad(np.ones(len(lab), np.float32), (0, pad))}

  def apply(variables, index):  # right on even examples, second-best on odd ones
    del variables
    label = index.astype(jnp.int32) % 10
    right = jax.nn.one_hot(label, 10) * 2 + jax.nn.one_hot((label + 1) % 10, 10)
    wrong = jax.nn.one_hot(label, 10) + jax.nn.one_hot((label + 1) % 10, 10) * 2
    return jnp.where((index.astype(jnp.int32) % 2 == 0)[:, None], right, wrong)

  step = evaluate.make_eval_step(apply, num_classes=10, mesh=mesh,
                                 variable_shardings=sharding.replicated(mesh))
  result = evaluate.evaluate(step, {}, batches(), mesh, expected_count=num_examples)
  assert result['num_examples'] == num_examples
  assert result['top1'] == ((num_examples + 1) // 2) / num_examples
  assert result['top5'] == 1.0
  dropped = list(batches())[:-1]
  if dropped:
    with pytest.raises(RuntimeError, match=f'but the split has {num_examples}'):
      evaluate.evaluate(step, {}, iter(dropped), mesh, expected_count=num_examples)


def test_missing_dataset_says_how_to_prepare(tmp_path):
  config = get_config('deit_s', 'runlocal')
  config.data.data_dir = str(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='manual_dir'):
    loop.train_and_evaluate(config, tmp_path / 'run')


def test_mismatched_classes_and_sizes_are_named(mock_imagenet, tmp_path):
  config = shrink(get_config('deit_s', 'baseline,runlocal'), TINY_DEIT)
  config.data.data_dir = mock_imagenet
  config.model.num_classes = 10
  with pytest.raises(ValueError, match='num_classes=10 but dataset .* has 1000 classes'):
    loop.train_and_evaluate(config, tmp_path)
  config.model.num_classes, config.data.image_size = 1000, 64
  with pytest.raises(ValueError, match='img_size=32 differs from config.data.image_size=64'):
    loop.train_and_evaluate(config, tmp_path)
  config.data.image_size, config.optim.grad_accum_steps = 32, 3
  with pytest.raises(ValueError, match='grad_accum_steps=3'):
    loop.train_and_evaluate(config, tmp_path)
