"""Checkpoints: orbax CheckpointManager (async, keep-N, preemption) and `init_from`.

A checkpoint step holds three items:
  params  {'params', 'batch_stats'}          what `init_from` reads
  train   {'step', 'opt_state', 'ema'?}      the rest of the train state
  meta    JSON: the model's name and parameter shapes, the run's config, and
          the input pipeline's position. The data iterator is deterministic
          given the step (data contract), so the position is just the next step.
A checkpoint of another model fails with a message naming both models, one of
a changed config with the fields that changed (runconfig.py). A newest step
that cannot be read (truncated or missing files, non-finite values) is moved
aside to checkpoints.corrupt/ with a one-line warning, and the previous step
is restored; none readable is one error naming each step and its cause.
The caller never saves a non-finite state (train.py checks before `save`), so
keep-N retention cannot rotate out the newest finite checkpoint.
"""
from __future__ import annotations

import contextlib
import logging as std_logging
import os
import re
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from stvit_jax import cli, names, paths
from stvit_jax.train import runconfig

ITEMS = ('params', 'train', 'meta')


class CheckpointError(cli.UserError):
  """No checkpoint of the workdir is readable, a save failed, or the workdir's config
  changed; the message says what to do (exit code 2)."""


def param_shapes(params):
  return {name: list(np.shape(x)) for name, x in names.flatten(params).items()}


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
    self._unconfirmed_save = False  # a save started whose outcome check_for_errors has not seen
    self._previous_handlers = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      # Multi-host runs rely on JAX's preemption service (reached_preemption below),
      # which agrees on one step across hosts; a local flag could not.
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if signum == signal.SIGINT and self.stop_requested.is_set():
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the save
    logging.warning('%s: will save a checkpoint after this step and exit%s', name,
                    ' (Ctrl-C again stops at once, unsaved)' if signum == signal.SIGINT else '')
    self.stop_requested.set()

  def should_stop(self, step):
    return self.stop_requested.is_set() or self.manager.reached_preemption(step)

  def due(self, step, *, force=False):
    """Whether `save(step, ..., force=force)` would save: the caller checks the state first."""
    return force or self.manager.should_save(step)

  def check_for_errors(self):
    """Raises CheckpointError, in one line, if a background save has failed."""
    with self._save_errors():
      self.manager.check_for_errors()
      # A failure in orbax's finalize thread is logged and cleared from
      # check_for_errors by orbax itself; once the save has ended, waiting returns
      # at once and re-raises it (asked once per save, not every step).
      if self._unconfirmed_save and not self.manager.is_saving_in_progress():
        self._unconfirmed_save = False
        self.manager.wait_until_finished()

  @contextlib.contextmanager
  def _save_errors(self):
    """A failed background save surfaces in whichever manager call comes next
    (check_for_errors, the next save, or the wait at close): one message for all."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'saving a checkpoint to {self.directory} failed: '
                                f'{_cause(e)}') from e

  def save(self, step, state, meta, *, force=False):
    """Saves `state` (at `step`) if the interval or `force` says so; async."""
    if not self.due(step, force=force):  # most steps: build nothing
      return False
    train = {k: v for k, v in state.items() if k not in ('params', 'batch_stats')}
    with self._save_errors():  # (waits for the previous save, which may have failed)
      saved = self.manager.save(step, force=force, args=ocp.args.Composite(
          params=ocp.args.StandardSave({'params': state['params'],
                                        'batch_stats': state['batch_stats']}),
          train=ocp.args.StandardSave(train),
          meta=ocp.args.JsonSave({**meta, 'data_position': {'next_step': step}})))
    if saved:
      self._unconfirmed_save = True
      logging.info('checkpoint: saving step %d to %s', step, self.directory)
    return saved

  def latest_step(self):
    return self.manager.latest_step()

  def restore(self, abstract_state, meta):
    """The newest readable saved state laid out like `abstract_state`, or None.

    A step that fails to read is moved aside (`_set_aside`) and the one before it
    tried; a checkpoint of another model or config is an error, not corruption.
    """
    failures = []
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      after = steps[i + 1] if i + 1 < len(steps) else None  # what is tried next
      saved, error = None, None
      try:
        with _quiet_orbax():
          saved = self.manager.restore(step, args=ocp.args.Composite(
              meta=ocp.args.JsonRestore())).meta
      except Exception as e:  # pylint: disable=broad-except
        error = e
      if self._failed_somewhere(step, error, after, failures):
        continue
      check_same_model(saved, meta, self.directory)
      changed, refusal = runconfig.check_resume(saved.get('config'), meta.get('config'),
                                                self.directory.parent)
      if refusal:
        raise CheckpointError(refusal)
      for field, old, new in changed:
        logging.warning('resuming with config.%s changed from %r to %r '
                        '(config.resume_allow_changes)', field, old, new)
      try:
        with _quiet_orbax():
          state = self._restore_state(step, abstract_state, saved)
      except Exception as e:  # pylint: disable=broad-except
        error = e
      if self._failed_somewhere(step, error, after, failures):
        continue
      return state
    if failures:
      raise CheckpointError(f'no checkpoint in {self.directory} is readable: '
                                + '; '.join(failures))
    return None

  def _failed_somewhere(self, step, error, after, failures):
    """Whether reading `step` failed on any process (`error`: this one's, or None); if
    so, every process sets it aside together and tries `after`."""
    failed = _processes_failing(error is not None)
    if failed:
      error = error or RuntimeError(f'unreadable on process(es) {failed}')
      failures.append(self._set_aside(step, error, after))
    return bool(failed)

  def _restore_state(self, step, abstract_state, saved):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    train = {k: v for k, v in abstract.items() if k not in ('params', 'batch_stats')}
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore({'params': abstract['params'],
                                         'batch_stats': abstract['batch_stats']}),
        train=ocp.args.StandardRestore(train)))
    if int(out.train['step']) != saved['data_position']['next_step']:
      raise RuntimeError(f'inconsistent: train.step={int(out.train["step"])}, data position '
                         f'{saved["data_position"]}')
    state = {**out.params, **out.train}
    if not all_finite(state):  # written before saves were checked
      raise FloatingPointError('it holds non-finite values')
    return state

  def _set_aside(self, step, error, after=None):
    """Moves unreadable step `step` to checkpoints.corrupt/ (never deletes it); warns in
    one line (the full error too with --verbose); `after`: the step tried next."""
    source = self.directory / str(step)
    target = self.directory.parent / 'checkpoints.corrupt' / f'{step}-{int(time.time())}'
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'checkpoint_set_aside_{step}')
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      source.rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'checkpoint_set_aside_{step}_done')
    self.manager.reload()
    cause = _cause(error)
    then = f'restoring step {after} instead' if after is not None else 'no earlier step left'
    logging.warning('checkpoint step %d in %s is unreadable (%s); moved it to %s, %s', step,
                    self.directory, cause, target, then)
    if cli.verbose():
      logging.warning('checkpoint step %d, the full error: %r', step, error)
    return f'step {step}: {cause} (moved to {target})'

  def close(self, *, wait=True):
    if wait:
      with self._save_errors():
        self.manager.wait_until_finished()
    with contextlib.suppress(Exception):  # closing after a failure: the failure is reported
      self.manager.close()
    for sig, handler in self._previous_handlers.items():
      signal.signal(sig, handler)
    self._previous_handlers = {}


def _processes_failing(failed_here):
  """The ids of the processes whose restore of a step failed ([] when all read it).

  Every process reads its own shards, so a damaged file, a flaky mount or a host's own
  failure can break the read on one host only; if each acted alone, one process would
  resume from step N and another from an earlier step (or wait for it forever in the next
  collective). One all-gather of a flag makes the decision common."""
  if jax.process_count() == 1:
    return [0] if failed_here else []
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([failed_here], np.int32))
  return [int(i) for i in np.flatnonzero(np.asarray(flags).reshape(-1))]


def all_finite(tree):
  """Whether every floating-point leaf of `tree` is finite (one reduction on device)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return True
  return bool(jax.device_get(jax.jit(
      lambda xs: jnp.all(jnp.stack([jnp.isfinite(x).all() for x in xs])))(leaves)))


CAUSE_CHARS = 160  # a warning stays one readable line; --verbose has the whole text

# Orbax reports an array it cannot read with the index and the whole TensorStore spec
# (hundreds of characters, a bound method's repr among them): what matters is which.
_UNREADABLE_ARRAY = re.compile(r'Encountered error while reading array index: .*', re.DOTALL)


def _cause(error):
  """An exception in one short line: its type and what the first line of its message
  says, without TensorStore's dump of the array spec."""
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  first = _UNREADABLE_ARRAY.sub('an array cannot be read: a data file is truncated or '
                                'damaged', lines[0] if lines else '')
  if len(first) > CAUSE_CHARS:
    first = first[:CAUSE_CHARS - 3].rstrip() + '...'
  if type(error) is Exception and first:  # orbax's bare Exception: the type says nothing
    return first
  return f'{type(error).__name__}: {first}' if first else type(error).__name__


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax and asyncio log each failing read's traceback (hundreds of lines for one
  truncated file); the exception itself is reported in one line by the caller."""
  loggers = [std_logging.getLogger(n) for n in ('asyncio', 'absl', 'orbax')]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(std_logging.CRITICAL)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def has_checkpoints(workdir):
  """Whether `workdir` holds saved steps already (a resume), without creating anything."""
  path = epath.Path(paths.absolute(workdir)) / 'checkpoints'
  return path.is_dir() and any(p.name.isdigit() for p in path.iterdir())


def _step_dirs(directory):
  """An earlier run's workdir, its checkpoints/ folder or one step folder -> its step
  folders, newest first (one step folder: just it)."""
  path = epath.Path(paths.absolute(directory))
  if (path / 'params').exists() and (path / 'meta').exists():
    return [path]
  for candidate in (path / 'checkpoints', path):
    if candidate.is_dir():
      steps = sorted((int(p.name) for p in candidate.iterdir() if p.name.isdigit()),
                     reverse=True)
      if steps:
        return [candidate / str(s) for s in steps]
  return []


def _find_step_dir(directory):
  found = _step_dirs(directory)
  return found[0] if found else None


def is_run_checkpoint(directory):
  """True if `directory` holds a checkpoint written by this trainer."""
  return _find_step_dir(directory) is not None


def restore_on_host(path):
  """A saved pytree item as arrays on this host's first device, whatever the topology
  it was saved from (a raw restore would insist on the saving run's device layout)."""
  path = paths.absolute(path)
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return checkpointer.restore(path, target)


def read_run_weights(directory, *, ema=False):
  """(step folder, its meta, {'params/...': array, 'batch_stats/...': array}) of the newest
  step of a run that reads and is finite; `ema`: the EMA parameters (what its evaluation
  measured as eval_ema) instead of the raw ones. A step that fails is skipped with a
  one-line warning and left where it is (a reader does not move a run's files)."""
  failures = []
  for step_dir in _step_dirs(directory):
    try:
      with _quiet_orbax():
        saved = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / 'meta')
        weights = restore_on_host(step_dir / 'params')
        if ema:
          train = restore_on_host(step_dir / 'train')
          if 'ema' not in train:
            raise KeyError(f'no EMA parameters in step {step_dir.name} (config.ema_decay=0)')
          weights = {'params': train['ema'], 'batch_stats': weights['batch_stats']}
      if not all_finite(weights):
        raise FloatingPointError('it holds non-finite values')
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'step {step_dir.name}: {_cause(e)}')
      logging.warning('checkpoint %s is unreadable (%s); trying the step before it', step_dir,
                      _cause(e))
      continue
    return step_dir, saved, names.flatten(weights)
  raise CheckpointError(f'no checkpoint in {directory} is readable' + (
      ': ' + '; '.join(failures) if failures else ' (no step folders)'))


def load_run_params(directory, params, batch_stats, current_meta, *, ema=False):
  """`init_from` an earlier run: its params and batch stats, laid out like ours, from its
  newest readable, finite step (`read_run_weights`; `ema`: its EMA parameters).

  The architecture must match. A head of another shape (other classes) is
  not loaded: `params` keeps its freshly initialised head.
  """
  step_dir, saved, flat = read_run_weights(directory, ema=ema)
  theirs, mine = saved['param_shapes'], current_meta['param_shapes']
  new_head = {k for k in mine
              if k in theirs and names.head_is_replaced(k, theirs[k], mine[k])}
  check_same_model({'model': saved['model'],
                    'param_shapes': {k: v for k, v in theirs.items() if k not in new_head}},
                   {'model': current_meta['model'],
                    'param_shapes': {k: v for k, v in mine.items() if k not in new_head}},
                   step_dir)

  def fill(prefix, tree):
    def one(name, x):
      if prefix == 'params' and name in new_head:
        return x
      return np.asarray(flat[f'{prefix}/{name}']).astype(x.dtype)
    return names.map_with_names(one, tree)

  provenance = {'source': os.fspath(step_dir), 'model': saved['model'],
                'step': saved['data_position']['next_step'],
                'head_replaced': bool(new_head), 'ema': ema}
  return fill('params', params), fill('batch_stats', batch_stats), provenance
