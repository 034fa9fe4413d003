"""Checkpoints: orbax CheckpointManager (async, keep-N, preemption) and `init_from`.

A checkpoint step holds three items:
  params  {'params', 'batch_stats'}          what `init_from` reads
  train   {'step', 'opt_state', 'ema'?}      the rest of the train state
  meta    JSON: the model's name and parameter shapes, and the input
          pipeline's position. The data iterator is deterministic given the
          step (data contract), so the position is just the next step.
A checkpoint of another model fails with a message naming both models.
"""
from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from stvit_jax import paths, sharding

ITEMS = ('params', 'train', 'meta')


def param_shapes(params):
  return {sharding._path_str(p): list(np.shape(x))  # pylint: disable=protected-access
          for p, x in jax.tree_util.tree_leaves_with_path(params)}


def describe(config, params):
  """The identity of a run's model, stored in and checked against checkpoints."""
  return {'model': config.model.name, 'param_shapes': param_shapes(params)}


def check_same_model(saved, current, where):
  """Raises ValueError naming what differs between two `describe()` dicts."""
  if saved['model'] != current['model']:
    raise ValueError(f'the checkpoint in {where} was written by model {saved["model"]!r} '
                     f'but config.model.name is {current["model"]!r}; use another workdir '
                     'or the matching config')
  a, b = saved['param_shapes'], current['param_shapes']
  diff = sorted((set(a) ^ set(b)) | {k for k in set(a) & set(b) if a[k] != b[k]})
  if diff:
    shown = '; '.join(f'{k}: checkpoint {a.get(k)} vs model {b.get(k)}' for k in diff[:5])
    raise ValueError(f'the checkpoint in {where} is of model {saved["model"]!r} with other '
                     f'parameter shapes ({len(diff)} differ: {shown}); the config changed '
                     'the architecture (config.model.*) since it was written')


class Checkpointer:
  """Saves every `every_steps` steps and when stopped; restores the latest step."""

  def __init__(self, workdir, *, every_steps, keep, async_save):
    policies = ocp.checkpoint_managers
    self.directory = epath.Path(paths.absolute(workdir)) / 'checkpoints'
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            save_decision_policy=policies.AnySavePolicy([
                policies.FixedIntervalPolicy(every_steps),
                policies.PreemptionCheckpointingPolicy()])))
    self.stop_requested = threading.Event()
    self._previous_handler = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      # Multi-host runs rely on JAX's preemption service (reached_preemption below),
      # which agrees on one step across hosts; a local flag could not.
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: will save a checkpoint after this step and exit')
    self.stop_requested.set()

  def should_stop(self, step):
    return self.stop_requested.is_set() or self.manager.reached_preemption(step)

  def save(self, step, state, meta, *, force=False):
    """Saves `state` (at `step`) if the interval or `force` says so; async."""
    if not (force or self.manager.should_save(step)):  # most steps: build nothing
      return False
    train = {k: v for k, v in state.items() if k not in ('params', 'batch_stats')}
    saved = self.manager.save(step, force=force, args=ocp.args.Composite(
        params=ocp.args.StandardSave({'params': state['params'],
                                      'batch_stats': state['batch_stats']}),
        train=ocp.args.StandardSave(train),
        meta=ocp.args.JsonSave({**meta, 'data_position': {'next_step': step}})))
    if saved:
      logging.info('checkpoint: saving step %d to %s', step, self.directory)
    return saved

  def latest_step(self):
    return self.manager.latest_step()

  def restore(self, abstract_state, meta):
    """The latest saved state laid out like `abstract_state` (with shardings), or None."""
    step = self.manager.latest_step()
    if step is None:
      return None
    saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    check_same_model(saved.meta, meta, self.directory)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    train = {k: v for k, v in abstract.items() if k not in ('params', 'batch_stats')}
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore({'params': abstract['params'],
                                         'batch_stats': abstract['batch_stats']}),
        train=ocp.args.StandardRestore(train)))
    if int(out.train['step']) != saved.meta['data_position']['next_step']:
      raise RuntimeError(f'checkpoint step {step} is inconsistent: train.step='
                         f'{int(out.train["step"])}, data position {saved.meta["data_position"]}')
    return {**out.params, **out.train}

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)


def _find_step_dir(directory):
  """An earlier run's workdir, its checkpoints/ folder or one step folder -> step folder."""
  path = epath.Path(paths.absolute(directory))
  if (path / 'params').exists() and (path / 'meta').exists():
    return path
  for candidate in (path / 'checkpoints', path):
    if candidate.is_dir():
      steps = sorted(int(p.name) for p in candidate.iterdir() if p.name.isdigit())
      if steps:
        return candidate / str(steps[-1])
  return None


def is_run_checkpoint(directory):
  """True if `directory` holds a checkpoint written by this trainer."""
  return _find_step_dir(directory) is not None


def _flat(tree):
  return {sharding._path_str(p): x  # pylint: disable=protected-access
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def restore_on_host(path):
  """A saved pytree item as arrays on this host's first device, whatever the topology
  it was saved from (a raw restore would insist on the saving run's device layout)."""
  path = paths.absolute(path)
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return checkpointer.restore(path, target)


def load_run_params(directory, params, batch_stats, current_meta):
  """`init_from` an earlier run: its params and batch stats, laid out like ours.

  The architecture must match. A head of another shape (other classes) is
  not loaded: `params` keeps its freshly initialised head.
  """
  step_dir = _find_step_dir(directory)
  saved = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / 'meta')
  theirs, mine = saved['param_shapes'], current_meta['param_shapes']
  new_head = {k for k in mine if k.split('/')[0] in ('head', 'head_dist')
              and theirs.get(k) not in (None, mine[k])}
  check_same_model({'model': saved['model'],
                    'param_shapes': {k: v for k, v in theirs.items() if k not in new_head}},
                   {'model': current_meta['model'],
                    'param_shapes': {k: v for k, v in mine.items() if k not in new_head}},
                   step_dir)
  flat = _flat(restore_on_host(step_dir / 'params'))

  def fill(prefix, tree):
    def one(path, x):
      name = sharding._path_str(path)  # pylint: disable=protected-access
      if prefix == 'params' and name in new_head:
        return x
      return np.asarray(flat[f'{prefix}/{name}']).astype(x.dtype)
    return jax.tree_util.tree_map_with_path(one, tree)

  provenance = {'source': os.fspath(step_dir), 'model': saved['model'],
                'step': saved['data_position']['next_step'],
                'head_replaced': bool(new_head)}
  return fill('params', params), fill('batch_stats', batch_stats), provenance
