"""`build(config, mesh, batch_spec)`: the trainer, one place for the train state, its
shardings and the jitted train and eval steps. `train_and_evaluate` (loop.py), `aot`,
`benchmark --train`, the tests and notebook 03 build the same `Trainer`; none assembles
its own step.

The train state is a dict {step, params, batch_stats, opt_state[, ema]} placed on the mesh
by the sharding rules. Randomness (mixup, stochastic depth) is derived from (seed, step).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from stvit_jax.data import device_augment, mixup
from stvit_jax.models import execution
from stvit_jax.runtime import sharding, xla_cpu
from stvit_jax.train import checkpoint, evaluate, health, optim
from stvit_jax.train.functional import (create_model, input_kind, make_apply, placeholder_rngs,
                                        split)

Steps = collections.namedtuple(
    'Steps', 'per_epoch total warmup eval_every checkpoint_every log_every')


def schedule_steps(config, steps_per_epoch):
  """Converts the config's durations to steps: `X_steps` if set (>= 0), else `X_epochs`."""
  def steps(name, minimum=1):
    n = config[f'{name}_steps']
    n = int(n) if n >= 0 else int(round(config[f'{name}_epochs'] * steps_per_epoch))
    if n < minimum:
      raise ValueError(f'config.{name}_steps / {name}_epochs give {n} steps; need >= {minimum}')
    return n
  return Steps(steps_per_epoch, steps('total'), steps('warmup', 0), steps('eval_every', 0),
               steps('checkpoint_every'), max(1, config.log_every_steps))


def make_train_step(config, apply, tx, schedule, num_classes, inputs='image'):
  """The pure train step: (state, batch) -> (state, metrics); the model reads batch[inputs]."""
  accum, ema_decay, mix = config.optim.grad_accum_steps, config.ema_decay, config.mixup
  skip_nonfinite = config.optim.get('skip_nonfinite', 0) > 0
  use_mixup = mix.prob > 0 and (mix.mixup_alpha > 0 or mix.cutmix_alpha > 0)

  def loss_fn(params, batch_stats, images, targets, rng):
    variables = {'params': params, 'batch_stats': batch_stats}
    logits, batch_stats = apply(variables, images, train=True, rng=rng)
    return optax.softmax_cross_entropy(logits, targets).mean(), batch_stats

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    step, params = state['step'], state['params']
    step_rng = jax.random.fold_in(jax.random.key(config.seed), step)
    mix_rng, drop_rng = jax.random.split(step_rng)
    images = evaluate.model_input(batch)
    if 'image' in batch:  # uint8 pixels: normalised and erased here (data/device_augment.py)
      images = device_augment.train_images(jax.random.fold_in(step_rng, 1), images,
                                           config.data)
    if use_mixup:
      images, targets = mixup.mixup_cutmix(mix_rng, images, batch['label'],
                                           num_classes=num_classes, cfg=mix)
    else:
      targets = mixup.soft_targets(batch['label'], num_classes, mix.label_smoothing)
    if accum == 1:
      (loss, batch_stats), grads = grad_fn(params, state['batch_stats'], images, targets, drop_rng)
    else:  # micro-batch i takes rows i, i+accum, ...: each stays spread over all devices
      def micro(x):
        return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)

      def body(carry, xs):
        grads, loss, stats = carry
        i, im, tg = xs
        (l, stats), g = grad_fn(params, stats, im, tg, jax.random.fold_in(drop_rng, i))
        return (jax.tree.map(jnp.add, grads, g), loss + l, stats), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      (grads, loss, batch_stats), _ = jax.lax.scan(
          body, (zeros, jnp.zeros((), jnp.float32), state['batch_stats']),
          (jnp.arange(accum), micro(images), micro(targets)))
      grads, loss = jax.tree.map(lambda g: g / accum, grads), loss / accum
    updates, opt_state = tx.update(grads, state['opt_state'], params)
    new = {'step': step + 1, 'params': optax.apply_updates(params, updates),
           'batch_stats': batch_stats, 'opt_state': opt_state}
    if ema_decay > 0:
      new['ema'] = optax.incremental_update(new['params'], state['ema'], 1 - ema_decay)
    grad_norm = optax.tree.norm(grads)
    metrics = {'loss': loss, 'lr': schedule(step), 'grad_norm': grad_norm,
               **health.step_metrics(step, loss, grad_norm)}
    if skip_nonfinite:  # a non-finite update leaves the state as it was (but the step counts)
      kept = health.keep_if_finite(metrics['finite'], {k: v for k, v in new.items() if k != 'step'},
                                   {k: v for k, v in state.items() if k != 'step'})
      new = {'step': new['step'], **kept}
    return new, metrics

  return train_step


def make_init_state(config, tx):
  """() -> a fresh train state {step, params, batch_stats, opt_state[, ema]}."""
  def init_state():
    _, params, batch_stats, _ = split(create_model(config))
    state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'batch_stats': batch_stats,
             'opt_state': tx.init(params)}
    if config.ema_decay > 0:
      state['ema'] = params
    return state
  return init_state


def abstract_state(init_state, mesh, rules):
  """-> (the state's shapes as ShapeDtypeStructs carrying their shardings, the shardings)."""
  abstract = jax.eval_shape(init_state)
  shardings = sharding.tree_shardings(abstract, mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings


def jit_train_step(train_step, mesh, shardings, cpu_library=xla_cpu.TRAINING):
  """The step as the trainer compiles it: state donated, batch split over all devices
  (on CPU, dots and convolutions by `cpu_library`: stvit_jax/runtime/xla_cpu.py)."""
  return jax.jit(train_step, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0,
                 compiler_options=xla_cpu.compiler_options(cpu_library, mesh=mesh))


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Everything that runs a config on a mesh, built once by `build`.

  `train_step(state, batch) -> (state, metrics)` is the jitted step (state
  donated); `eval_step(variables, batch) -> masked sums` the jitted evaluation;
  `abstract` the train state as ShapeDtypeStructs carrying their `shardings`;
  `batch_spec` one global batch likewise, split over all devices.
  """
  config: object
  mesh: jax.sharding.Mesh
  steps: Steps
  schedule: Callable
  tx: optax.GradientTransformation
  graphdef: object
  rngs: object           # stand-ins for the dropout rng streams (reseeded every step)
  apply: Callable        # apply(variables, inputs, *, train, rng=None) -> (logits, stats)
  init_state: Callable   # () -> a fresh, unplaced train state
  abstract: dict
  shardings: dict
  batch_spec: dict
  inputs: str            # the batch key the model reads ('image')
  train_step: Callable
  eval_step: Callable
  meta: dict             # the model's identity in checkpoints (checkpoint.describe)

  @property
  def num_params(self):
    return sum(int(np.prod(s)) for s in self.meta['param_shapes'].values())

  def initial_state(self):
    """A fresh train state, initialised in place on the mesh."""
    return jax.jit(self.init_state, out_shardings=self.shardings)()

  def lower(self):
    """The train step lowered for the abstract state and batch (nothing is allocated)."""
    return self.train_step.lower(self.abstract, self.batch_spec)


def build(config, mesh, batch_spec, *, steps_per_epoch, cpu_library=None):
  """The trainer of `config` on `mesh` for batches like `batch_spec`.

  `batch_spec` ({key: (shape, dtype)} or ShapeDtypeStructs of one global batch)
  comes from the data side (`pipeline.batch_spec`); `steps_per_epoch` turns the config's epochs into
  steps (it changes the schedule's constants, not the program's shapes). On CPU the
  steps' dots and convolutions go to `cpu_library` (stvit_jax/runtime/xla_cpu.py; None: the
  train step to xla_cpu.TRAINING, evaluation to xla_cpu.INFERENCE).
  """
  steps = schedule_steps(config, steps_per_epoch)
  schedule = optim.learning_rate(config, steps.total, steps.warmup)
  tx = optim.make(config, schedule)
  model = nnx.eval_shape(lambda: create_model(config))
  # BatchNorm statistics per slice (config.mesh.batch_norm), carried by the graphdef
  execution.batch_norm_groups(model, batch_norm_groups(config, mesh))
  graphdef, abs_params, _, abs_rngs = split(model)
  rngs = placeholder_rngs(abs_rngs)
  apply = make_apply(graphdef, rngs)
  init_state = make_init_state(config, tx)
  abstract, shardings = abstract_state(init_state, mesh, config.sharding_rules)
  inputs = evaluate.inputs_key(batch_spec)
  batch_sharding = sharding.batch_sharding(mesh)
  batch_spec = {k: jax.ShapeDtypeStruct(*((v.shape, v.dtype) if hasattr(v, 'shape') else v),
                                        sharding=batch_sharding)
                for k, v in batch_spec.items()}
  num_classes = config.model.num_classes
  train_step = jit_train_step(make_train_step(config, apply, tx, schedule, num_classes, inputs),
                              mesh, shardings, cpu_library or xla_cpu.TRAINING)
  var_shardings = {'params': shardings['params'], 'batch_stats': shardings['batch_stats']}
  eval_step = evaluate.make_eval_step(
      lambda v, x: apply(v, device_augment.eval_images(x, config.data), train=False)[0],
      num_classes=num_classes, mesh=mesh, variable_shardings=var_shardings,
      cpu_library=cpu_library or xla_cpu.INFERENCE)
  return Trainer(config, mesh, steps, schedule, tx, graphdef, rngs, apply, init_state,
                 abstract, shardings, batch_spec, inputs, train_step, eval_step,
                 checkpoint.describe(config, abs_params))


BATCH_NORM = ('slice', 'global')


def batch_norm_groups(config, mesh):
  """How many groups of the batch BatchNorm takes its training statistics from
  (config.mesh.batch_norm): 'slice', one per slice of the mesh (rows are slice-major),
  so that no statistic crosses the data-center network; 'global', the whole batch."""
  choice = config.mesh.get('batch_norm', 'slice')
  if choice not in BATCH_NORM:
    raise ValueError(f'config.mesh.batch_norm={choice!r} is not one of {list(BATCH_NORM)}')
  return sharding.num_slices(config, mesh.devices.flat) if choice == 'slice' else 1


def check_config(config, info, mesh):
  """Fails early, naming the field, for settings that cannot work together."""
  batch_norm_groups(config, mesh)
  for name in ('batch_size', 'eval_batch_size'):
    sharding.check_batch(name, config[name], mesh)
  accum = config.optim.grad_accum_steps
  if accum < 1 or config.batch_size % (accum * mesh.size):
    raise ValueError(f'config.optim.grad_accum_steps={accum}: batch_size={config.batch_size} '
                     f'must split into {accum} micro-batches divisible by {mesh.size} '
                     'devices')
  if config.model.num_classes != info.num_classes:
    raise ValueError(f'config.model.num_classes={config.model.num_classes} but dataset '
                     f'{config.data.name!r} has {info.num_classes} classes')
  mix = config.mixup
  if input_kind(config) == 'video' and mix.prob > 0 and (mix.mixup_alpha > 0 or
                                                         mix.cutmix_alpha > 0):
    raise ValueError(f'config.mixup.prob={mix.prob}: Mixup/CutMix are for images; set '
                     'config.mixup.prob=0 for a video model (the Video Swin recipe has none)')
  if config.model.img_size != config.data.image_size:
    raise ValueError(f'config.model.img_size={config.model.img_size} differs from '
                     f'config.data.image_size={config.data.image_size}; set both')

