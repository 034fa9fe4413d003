"""Model weights on disk: an orbax checkpoint plus `provenance.json`.

    DIR/weights/          orbax (StandardCheckpointer) of
                          {'params': {...}, 'batch_stats': {...}}, nested dicts
                          keyed by the NNX path ('layers' -> '2' -> 'blocks' -> ...)
    DIR/provenance.json   where the weights came from (model name, classes,
                          source file and its sha256, conversion options)

Written by `python -m stvit_jax.convert` and read by the trainer and tools
(`--config.init_from=DIR`). Loading is strict: every path and shape of the
model must be in the checkpoint and nothing else may be; the only tolerated
difference is a classifier head of another class count with `replace_head=True`.
"""
from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from stvit_jax import paths

WEIGHTS, PROVENANCE = 'weights', 'provenance.json'
COLLECTIONS = {'params': nnx.Param, 'batch_stats': nnx.BatchStat}
HEADS = ('head', 'head_dist')  # the leaves a class-count change may replace


def flat_variables(model):
  """{'params/a.0.b': array-like, 'batch_stats/...': ...} for every weight of `model`."""
  flat = {}
  for collection, kind in COLLECTIONS.items():
    for path, var in nnx.to_flat_state(nnx.state(model, kind)):
      flat[f'{collection}/{".".join(map(str, path))}'] = var.get_value()
  return flat


def _nest(flat):
  tree = {c: {} for c in COLLECTIONS}
  for name, value in flat.items():
    collection, path = name.split('/', 1)
    node = tree[collection]
    *parents, leaf = path.split('.')
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def _flatten_tree(tree):
  flat = {}
  for collection, sub in tree.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(sub)[0]:
      flat[f'{collection}/{".".join(str(k.key) for k in path)}'] = leaf
  return flat


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


def _is_head(name):
  return name.split('/', 1)[1].split('.')[0] in HEADS


def load_weights(model, directory, *, replace_head=False, name=None, options=None) -> dict:
  """Fills `model` in place from `directory`; returns the provenance dict.

  `directory` may also be an address (`pretrained`, hf://..., https://...): it is
  downloaded and converted once into the cache (stvit_jax.pretrained) for the
  registry model `name` built with constructor `options`.

  Strict: raises ValueError naming every missing, unexpected and mis-shaped
  weight, or, when `name` differs from the model the weights were converted for
  (provenance.json), both models. With `replace_head=True`, `head` / `head_dist`
  weights whose shapes differ (another class count) keep the model's fresh
  initialisation.
  """
  from stvit_jax import pretrained  # here: it imports the registry, which imports models
  directory = pretrained.resolve(directory, model=name, options=options)
  directory = epath.Path(paths.absolute(directory))  # local or gs://
  path = directory / WEIGHTS
  if not path.is_dir():
    raise FileNotFoundError(f'no weights at {path}: expected a directory written by '
                            'stvit_jax.weights.save_weights (python -m stvit_jax.convert)')
  checkpointer = ocp.StandardCheckpointer()
  stored = {k: tuple(m.shape) for k, m in
            _flatten_tree(checkpointer.metadata(path).item_metadata.tree).items()}
  current = flat_variables(model)
  missing = sorted(set(current) - set(stored))
  unexpected = sorted(set(stored) - set(current))
  misshaped = sorted(k for k in set(current) & set(stored) if tuple(current[k].shape) != stored[k])
  kept = [k for k in misshaped if replace_head and _is_head(k)]
  misshaped = [k for k in misshaped if k not in kept]
  if missing or unexpected or misshaped:
    source = (read_provenance(directory).get('model')
              if (directory / PROVENANCE).exists() else None)
    if name and source and source != name:
      raise ValueError(
          f'{directory} does not fit {type(model).__name__}: it holds weights of {source} (its '
          f'provenance.json), not of {name}: '
          f'{len(missing)} missing, {len(unexpected)} unexpected and {len(misshaped)} '
          f'mis-shaped weights. Convert {name} weights (python -m stvit_jax.convert '
          f'--model {name}) or train {source} (config.model.name)')
    lines = [f'{directory} does not fit {type(model).__name__}:']
    lines += [f'  missing from the checkpoint: {k} {tuple(current[k].shape)}' for k in missing]
    lines += [f'  unexpected in the checkpoint: {k} {stored[k]}' for k in unexpected]
    lines += [f'  shape mismatch: {k} checkpoint {stored[k]} vs model {tuple(current[k].shape)}'
              for k in misshaped]
    if any(_is_head(k) for k in misshaped):
      lines.append('  (a head of another class count loads with replace_head=True)')
    raise ValueError('\n'.join(lines))

  def abstract(name, value):
    if name in kept:  # read as stored, then dropped
      return np.empty(stored[name], np.float32)
    sharding = getattr(value, 'sharding', None)
    return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)

  restored = _flatten_tree(checkpointer.restore(
      path, _nest({k: abstract(k, v) for k, v in current.items()})))
  for collection, kind in COLLECTIONS.items():
    state = nnx.state(model, kind)
    for p, var in nnx.to_flat_state(state):
      name = f'{collection}/{".".join(map(str, p))}'
      if name not in kept:
        var.set_value(restored[name])
    nnx.update(model, state)
  return read_provenance(directory) if (directory / PROVENANCE).exists() else {}


def create_model(directory, *, replace_head=False, **overrides):
  """Builds the model named in `directory`'s provenance and loads its weights.

  An address from the catalogue (hf://..., https://...) names its model itself.

  `overrides` replace constructor arguments recorded at conversion (e.g.
  `num_classes=10` with `replace_head=True` for fine-tuning on 10 classes).
  """
  from stvit_jax import models, pretrained  # here: the models import nothing from this module
  directory = pretrained.resolve(directory)
  provenance = read_provenance(directory)
  kwargs = {**provenance.get('options', {}), **overrides}
  model = models.create(provenance['model'], **kwargs)
  load_weights(model, directory, replace_head=replace_head)
  return model
