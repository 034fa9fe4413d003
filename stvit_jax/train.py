"""`build(config, mesh, batch_spec)`: the trainer; `train_and_evaluate(config, workdir)`:
the training loop, used unchanged by the command line (main.py), the tests and the
notebooks. `aot`, `benchmark --train`, the tests and notebook 03 build the same
`Trainer`; none assembles its own step.

The model is used functionally: `nnx.split` once into a graph definition and
states; the jitted steps `nnx.merge` inside. The train state is a dict
{step, params, batch_stats, opt_state[, ema]} placed on the mesh by the
sharding rules. Randomness (mixup, stochastic depth) is derived from
(seed, step), and the data iterator is deterministic given the step, so a
resumed run sees exactly the batches and random numbers of an uninterrupted one.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from stvit_jax import (checkpoint, evaluate, health, models, optim, paths, runconfig, sharding,
                       warm_start, xla_cpu)
from stvit_jax.data import device_augment, mixup, pipeline, video
from stvit_jax.metric_writer import MetricWriter

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


def input_kind(config):
  """'image' or 'video': what config.model.name takes (its family's record)."""
  return models.family(config.model.name).input_kind


def data_for(config):
  """The input pipeline module for the model's input kind: data/video.py or data/pipeline.py.

  Each checks that config.data names a dataset of its kind (an image dataset for
  a video model, or the reverse, stops with the field to change).
  """
  return video if input_kind(config) == 'video' else pipeline


def model_kwargs(config):
  return {k: v for k, v in config.model.items() if k not in ('name', 'dtype')}


def create_model(config):
  return models.create(config.model.name, seed=config.seed, dtype=config.model.dtype,
                       **model_kwargs(config))


def split(model):
  """-> graphdef, params, batch_stats, rest (the dropout rng streams)."""
  return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


def make_apply(graphdef, rng_state):
  """apply(variables, images, train, rng) -> (logits, batch_stats)."""
  def apply(variables, images, *, train, rng=None):
    # Fresh Variables in this trace: reseed and BatchNorm mutate them.
    params, stats, rngs = jax.tree.map(jnp.asarray, (variables['params'],
                                                     variables['batch_stats'], rng_state))
    model = nnx.merge(graphdef, params, stats, rngs)
    if rng is not None:
      nnx.reseed(model, dropout=rng)  # every stochastic-depth stream, from this step's key
    logits, _ = model(images, train=train)
    return logits.astype(jnp.float32), nnx.state(model, nnx.BatchStat)
  return apply


def placeholder_rngs(abstract):
  """Concrete stand-ins for the rng stream state; `nnx.reseed` replaces them in each step."""
  def one(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jnp.broadcast_to(jax.random.key(0), x.shape)
    return jnp.zeros(x.shape, x.dtype)
  return jax.tree.map(one, abstract)


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
  (on CPU, dots and convolutions by `cpu_library`: stvit_jax/xla_cpu.py)."""
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
  steps' dots and convolutions go to `cpu_library` (stvit_jax/xla_cpu.py; None: the
  train step to xla_cpu.TRAINING, evaluation to xla_cpu.INFERENCE).
  """
  steps = schedule_steps(config, steps_per_epoch)
  schedule = optim.learning_rate(config, steps.total, steps.warmup)
  tx = optim.make(config, schedule)
  graphdef, abs_params, _, abs_rngs = split(nnx.eval_shape(lambda: create_model(config)))
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


def check_config(config, info, mesh):
  """Fails early, naming the field, for settings that cannot work together."""
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


def train_and_evaluate(config, workdir):
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns a summary.

  Raises cli.Diverged when a step's loss or gradient norm is non-finite (nothing
  non-finite is ever saved), and the user errors of invalid configs before
  writing anything.
  """
  workdir = paths.absolute(workdir)
  mesh = sharding.make_mesh(config)
  data = data_for(config)
  info = data.dataset_info(config.data)
  check_config(config, info, mesh)
  trainer = build(config, mesh,
                  pipeline.batch_spec(config.data, config.batch_size, input_kind(config)),
                  steps_per_epoch=data.steps_per_epoch(config.data,
                                                       global_batch_size=config.batch_size))
  steps, shardings = trainer.steps, trainer.shardings
  run_config = runconfig.to_dict(config)
  meta = {**trainer.meta, 'config': run_config}
  num_params = trainer.num_params
  state = None
  if not checkpoint.has_checkpoints(workdir):  # a fresh run: load init_from before writing
    state = trainer.initial_state()
    if config.init_from:
      state = warm_start.init_from(config, state, trainer.graphdef, trainer.rngs, meta,
                                     shardings)

  ckpt = checkpoint.Checkpointer(workdir, every_steps=steps.checkpoint_every,
                                 keep=config.checkpoint.keep,
                                 async_save=config.checkpoint.async_save)
  if state is None:
    try:
      state = ckpt.restore(trainer.abstract, meta)
    except BaseException:
      ckpt.close()
      raise
    if state is None:  # step folders, but none that orbax lists as complete
      state = trainer.initial_state()
      if config.init_from:
        state = warm_start.init_from(config, state, trainer.graphdef, trainer.rngs, meta,
                                     shardings)
    else:
      logging.info('resuming from %s at step %d', ckpt.directory, int(state['step']))
  start = int(jax.device_get(state['step']))
  if jax.process_index() == 0:
    paths_json = os.path.join(workdir, 'config.json')
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(paths_json, 'w') as f:
      json.dump(run_config, f, indent=1, sort_keys=True)
    logging.info('config: %s', paths_json)

  train_step, eval_step = trainer.train_step, trainer.eval_step

  def run_eval(step):
    results = {}
    for name, params in (('eval', 'params'), ('eval_ema', 'ema')):
      if params in state:
        variables = {'params': state[params], 'batch_stats': state['batch_stats']}
        batches = data.eval_iterator(config.data, global_batch_size=config.eval_batch_size)
        results[name] = evaluate.evaluate(eval_step, variables, batches, mesh,
                                          expected_count=info.num_eval)
        writer.write(step, name, results[name])
        logging.info('%s step %d: top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%d examples)', name,
                     step, 100 * results[name]['top1'], 100 * results[name]['top5'],
                     results[name]['loss'], results[name]['num_examples'])
    return results

  writer = MetricWriter(workdir, start_step=start)
  logging.info('%s: %.2fM parameters; %d steps (%d per epoch) of batch %d on mesh %s',
               config.model.name, num_params / 1e6, steps.total, steps.per_epoch,
               config.batch_size, dict(mesh.shape))
  batches = data.train_iterator(config.data, global_batch_size=config.batch_size,
                                seed=config.seed, start_step=start)
  tracker = health.Health(config.optim.get('skip_nonfinite', 0))
  pending, evals, stopped = [], {}, False
  t_start = t_last = time.perf_counter()
  step_last, t_first = start, None
  step = start
  try:
    while step < steps.total:
      state, metrics = train_step(state, sharding.to_global(next(batches), mesh))
      step += 1
      tracker.update(metrics)  # on device: no wait for the step
      pending.append(metrics)
      if step == start + 1:  # the first step compiles: time from its end on
        jax.block_until_ready(metrics)
        t_first = t_last = time.perf_counter()
        step_last = step
      if step % steps.log_every == 0 or step == steps.total:
        fetched = jax.device_get(pending)
        pending = []
        now = time.perf_counter()
        rate = (step - step_last) * config.batch_size / max(now - t_last, 1e-9)
        scalars = health.log_scalars(fetched)
        scalars['images_per_sec'] = rate
        if tracker.max_skips:
          scalars['skipped_updates'] = tracker.skipped()
        writer.write(step, 'train', scalars)
        eta = (steps.total - step) * config.batch_size / rate if rate > 0 else float('nan')
        logging.info('step %d/%d | epoch %.2f | loss %.4f | lr %.2e | %.0f img/s | ETA %s',
                     step, steps.total, step / steps.per_epoch, scalars['loss'], scalars['lr'],
                     rate, _hms(eta))
        health.check_finite(tracker, ckpt, fetched)
        t_last, step_last = now, step
      if steps.eval_every and (step % steps.eval_every == 0 or step == steps.total):
        health.check_finite(tracker, ckpt, pending)
        evals = run_eval(step)  # eval_every 0: never
      stopped = ckpt.should_stop(step)
      force = stopped or step == steps.total
      if ckpt.due(step, force=force):  # (asks the save policies once per step)
        health.check_finite(tracker, ckpt, pending)  # never save a non-finite state
        ckpt.save(step, state, meta, force=True)
      ckpt.check_for_errors()  # a failed background save: now, not at the next save
      if stopped:
        logging.warning('stop requested: saved step %d, exiting', step)
        break
    ckpt.close()
  except BaseException:
    ckpt.close(wait=False)
    writer.close()
    raise

  t_end = time.perf_counter()
  timed = step - (start + 1) if t_first is not None else 0
  summary = {
      'model': config.model.name, 'num_params': num_params, 'start_step': start,
      'final_step': step, 'total_steps': steps.total, 'stopped_early': stopped,
      'wall_time_s': t_end - t_start,
      'images_per_sec': timed * config.batch_size / max(t_end - (t_first or t_end), 1e-9),
      **{f'{name}_{k}': v for name, r in evals.items() for k, v in r.items()},
  }
  if tracker.max_skips:
    summary['skipped_updates'] = tracker.skipped()
  if writer.active:
    path = os.path.join(workdir, 'summary.json')
    if start == step and writer.tf.io.gfile.exists(path):
      # Rerunning a finished command trains and evaluates nothing: keep the numbers
      # of the run that did (its eval results, its speed).
      with writer.tf.io.gfile.GFile(path) as f:
        earlier = json.load(f)
      if earlier.get('final_step') == step:
        summary = {**earlier, 'start_step': start, 'stopped_early': False}
    with writer.tf.io.gfile.GFile(path, 'w') as f:
      json.dump(summary, f, indent=1)
  writer.close()
  logging.info('done: %s', json.dumps(summary))
  summary['state'] = state
  return summary


def _hms(seconds):
  if not np.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
