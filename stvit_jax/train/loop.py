"""`train_and_evaluate(config, workdir)`: the training loop, used unchanged by the command
line (main.py), the tests and the notebooks.

The data iterator is deterministic given the step and randomness comes from (seed, step),
so a resumed run sees exactly the batches and random numbers of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import numpy as np
from absl import logging

from stvit_jax import paths
from stvit_jax.data import inputs, pipeline, read_errors
from stvit_jax.runtime import compile_cache, sharding
from stvit_jax.train import checkpoint, evaluate, health, init_from, runconfig
from stvit_jax.train.functional import input_kind
from stvit_jax.train.metric_writer import MetricWriter
from stvit_jax.train.trainer import build, check_config


def train_and_evaluate(config, workdir):
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns a summary.

  Raises cli.Diverged when a step's loss or gradient norm is non-finite (nothing
  non-finite is ever saved), and the user errors of invalid configs before
  writing anything.
  """
  workdir = paths.absolute(workdir)
  t_build = time.perf_counter()
  mesh = sharding.make_mesh(config)
  data = inputs.for_kind(input_kind(config))
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
      state = init_from.warm_start(config, state, trainer.graphdef, trainer.rngs, meta,
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
        state = init_from.warm_start(config, state, trainer.graphdef, trainer.rngs, meta,
                                   shardings)
    else:
      logging.info('resuming from %s at step %d', ckpt.directory, int(state['step']))
  start = int(jax.device_get(state['step']))
  timings = {'build_s': time.perf_counter() - t_build}  # model, steps, state: fresh or restored
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
        t_eval = time.perf_counter()
        with compile_cache.Counts() as counts:
          results[name] = evaluate.evaluate(eval_step, variables, batches, mesh,
                                            expected_count=info.num_eval)
        if 'eval_s' not in timings:  # the first evaluation compiles (or loads) its step
          timings['eval_s'] = time.perf_counter() - t_eval
          logging.info('first evaluation: %.1f s, its step %s', timings['eval_s'],
                       counts.describe())
        writer.write(step, name, results[name])
        logging.info('%s step %d: top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%d examples)', name,
                     step, 100 * results[name]['top1'], 100 * results[name]['top5'],
                     results[name]['loss'], results[name]['num_examples'])
    return results

  writer = MetricWriter(workdir, start_step=start)
  logging.info('%s: %.2fM parameters; %d steps (%d per epoch) of batch %d on mesh %s',
               config.model.name, num_params / 1e6, steps.total, steps.per_epoch,
               config.batch_size, dict(mesh.shape))
  tracker = health.Health(config.optim.get('skip_nonfinite', 0))
  pending, evals, stopped = [], {}, False
  t_start = t_last = time.perf_counter()
  step_last, t_first = start, None
  step = start
  try:
    batches = data.train_iterator(config.data, global_batch_size=config.batch_size,
                                  seed=config.seed, start_step=start)  # (may fill a cache)
    while step < steps.total:
      # Only the first step compiles (or loads): count there, not in every step.
      counts = compile_cache.Counts() if step == start else contextlib.nullcontext()
      with counts:
        state, metrics = train_step(state, sharding.to_global(next(batches), mesh))
      step += 1
      tracker.update(metrics)  # on device: no wait for the step
      pending.append(metrics)
      if step == start + 1:  # the first step compiles: time from its end on
        jax.block_until_ready(metrics)
        t_first = t_last = time.perf_counter()
        step_last = step
        timings['first_step_s'] = t_first - t_start
        timings['to_first_step_s'] = seconds_since_process_start()
        logging.info('first train step: %.1f s, its program %s; %.1f s since the process '
                     'started (model and state %.1f s)', timings['first_step_s'],
                     counts.describe(), timings['to_first_step_s'], timings['build_s'])
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
  except read_errors.DataError as e:
    # The data, not the run, is broken: let the saves already started finish, so that
    # after the repair the same command resumes from the newest checkpoint.
    ckpt.close()
    writer.close()
    last = ckpt.latest_step()
    kept = f'it resumes from step {last}' if last is not None else 'no checkpoint yet'
    raise read_errors.DataError(f'{e} ({kept})') from e.__cause__
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
      **timings,
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


def seconds_since_process_start():
  """Wall seconds since this process started (Linux: /proc/self's creation time), the
  time a user waits for the first step; since this module's import elsewhere."""
  try:
    return time.time() - os.stat('/proc/self').st_ctime
  except OSError:
    return time.time() - _IMPORTED


_IMPORTED = time.time()


def _hms(seconds):
  if not np.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
