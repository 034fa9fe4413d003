"""Model weights on disk: an orbax checkpoint plus `provenance.json`.

    DIR/weights/          orbax (StandardCheckpointer) of
                          {'params': {...}, 'batch_stats': {...}}, nested dicts
                          keyed by the NNX path ('layers' -> '2' -> 'blocks' -> ...)
    DIR/provenance.json   where the weights came from (model name, classes,
                          source file and its sha256, conversion options)

Written by `python -m stvit_jax.tools.convert` and read by the trainer and tools
(`--config.init_from=DIR`); this module knows directories only: addresses,
the cache and "a model with its weights" are stvit_jax.weights.hub and .factory.
Loading is strict: every path and shape of the
model must be in the checkpoint and nothing else may be; the only tolerated
difference is a classifier head of another class count with `replace_head=True`.
"""
from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx, traverse_util

from stvit_jax import names, paths

WEIGHTS, PROVENANCE = 'weights', 'provenance.json'
COLLECTIONS = names.COLLECTIONS
HEADS = names.HEADS  # the leaves a class-count change may replace
flat_variables = names.weight_names  # {'params/a.0.b': array-like, ...}


def _nest(flat):
  """{'params/a.0.b': x} -> {'params': {'a': {'0': {'b': x}}}, 'batch_stats': {}} (orbax's
  tree; every collection present, also when empty, as weights have always been saved)."""
  tree = traverse_util.unflatten_dict(
      {(name.split('/', 1)[0], *name.split('/', 1)[1].split('.')): v for name, v in flat.items()})
  return {c: tree.get(c, {}) for c in COLLECTIONS}


def _flatten(tree):
  return {f'{c}/{".".join(p)}': x
          for (c, *p), x in traverse_util.flatten_dict(tree).items()}


def save_weights(directory, model, provenance: dict):
  """Writes `model`'s Param and BatchStat arrays and `provenance` under `directory`."""
  directory = epath.Path(paths.absolute(directory))  # local or gs://
  directory.mkdir(parents=True, exist_ok=True)
  target = directory / WEIGHTS
  if target.exists():
    raise FileExistsError(f'{target} already exists; choose another output directory '
                          'or delete it first')
  flat = {k: (np.asarray(v) if getattr(v, 'is_fully_addressable', True) else v)
          for k, v in flat_variables(model).items()}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(target, _nest(flat))
  checkpointer.wait_until_finished()
  (directory / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + '\n')


def read_provenance(directory):
  return json.loads((epath.Path(paths.absolute(directory)) / PROVENANCE).read_text())


def read_weights(directory) -> dict:
  """Every array in `directory`: {'params/a.0.b': np.ndarray, 'batch_stats/...': ...}."""
  path = epath.Path(paths.absolute(directory)) / WEIGHTS
  return {k: np.asarray(v) for k, v in _flatten(ocp.StandardCheckpointer().restore(path)).items()}


def load_weights(model, directory, *, replace_head=False, name=None) -> dict:
  """Fills `model` in place from the weights directory `directory`; returns the
  provenance dict. (Addresses and catalogue names: stvit_jax.weights.factory.load.)

  Strict: raises ValueError naming every missing, unexpected and mis-shaped
  weight, or, when `name` differs from the model the weights were converted for
  (provenance.json), both models. With `replace_head=True`, `head` / `head_dist`
  weights whose shapes differ (another class count) keep the model's fresh
  initialisation.
  """
  directory = epath.Path(paths.absolute(directory))  # local or gs://
  path = directory / WEIGHTS
  if not path.is_dir():
    raise FileNotFoundError(f'no weights at {path}: expected a directory written by '
                            'stvit_jax.weights.store.save_weights (python -m stvit_jax.tools.convert)')
  checkpointer = ocp.StandardCheckpointer()
  stored = {k: tuple(m.shape) for k, m in
            _flatten(checkpointer.metadata(path).item_metadata.tree).items()}
  current = flat_variables(model)
  missing = sorted(set(current) - set(stored))
  unexpected = sorted(set(stored) - set(current))
  misshaped = sorted(k for k in set(current) & set(stored) if tuple(current[k].shape) != stored[k])
  kept = [k for k in misshaped
          if replace_head and names.head_is_replaced(k, stored[k], current[k].shape)]
  misshaped = [k for k in misshaped if k not in kept]
  if missing or unexpected or misshaped:
    source = (read_provenance(directory).get('model')
              if (directory / PROVENANCE).exists() else None)
    if name and source and source != name:
      raise ValueError(
          f'{directory} does not fit {type(model).__name__}: it holds weights of {source} (its '
          f'provenance.json), not of {name}: '
          f'{len(missing)} missing, {len(unexpected)} unexpected and {len(misshaped)} '
          f'mis-shaped weights. Convert {name} weights (python -m stvit_jax.tools.convert '
          f'--model {name}) or train {source} (config.model.name)')
    lines = [f'{directory} does not fit {type(model).__name__}:']
    lines += [f'  missing from the checkpoint: {k} {tuple(current[k].shape)}' for k in missing]
    lines += [f'  unexpected in the checkpoint: {k} {stored[k]}' for k in unexpected]
    lines += [f'  shape mismatch: {k} checkpoint {stored[k]} vs model {tuple(current[k].shape)}'
              for k in misshaped]
    if any(names.is_head(k) for k in misshaped):
      lines.append('  (a head of another class count loads with replace_head=True)')
    raise ValueError('\n'.join(lines))

  def abstract(name, value):
    if name in kept:  # read as stored, then dropped
      return np.empty(stored[name], np.float32)
    sharding = getattr(value, 'sharding', None)
    return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)

  restored = _flatten(checkpointer.restore(
      path, _nest({k: abstract(k, v) for k, v in current.items()})))
  states = {collection: nnx.state(model, kind) for collection, kind in COLLECTIONS.items()}
  for name, var in names.weight_variables(model, states).items():
    if name not in kept:
      var.set_value(restored[name])
  for state in states.values():
    nnx.update(model, state)
  return read_provenance(directory) if (directory / PROVENANCE).exists() else {}
