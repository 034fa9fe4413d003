"""Weights from elsewhere for a run: `config.init_from`, one loader for two users.

A run's own checkpoints resume it (checkpoint.py); `init_from` instead takes the parameters
(and batch statistics) of converted weights (`python -m stvit_jax.tools.convert`, or
'pretrained' / hf:// / https:// through weights/hub.py) or of another run's checkpoint:

  warm_start  a fresh train state's parameters replaced at step 0; a head of another
              class count keeps its fresh initialisation
  eval-only   (eval_only.py) strict, heads included, nothing initialised
"""
from __future__ import annotations

import jax
from absl import logging
from etils import epath
from flax import nnx

from stvit_jax import paths
from stvit_jax.train import checkpoint
from stvit_jax.train.functional import model_kwargs, split
from stvit_jax.weights import hub, store


def load(config, graphdef, params, stats, rngs, meta, *, replace_head):
  """(params, batch_stats, provenance) of config.init_from for the model of `graphdef`.

  `params` / `stats` are the model's own: concrete for a warm start (a replaced head keeps
  them), abstract (ShapeDtypeStructs) for a strict load. `meta`: checkpoint.describe of
  the model. With `replace_head=False` a head of another class count is an error naming
  config.model.num_classes.
  """
  # 'pretrained', hf://, https://: downloaded and converted once into the user's cache.
  source = hub.resolve(config.init_from, model=config.model.name,
                       options=model_kwargs(config))
  if checkpoint.is_run_checkpoint(source):
    params, stats, provenance = checkpoint.load_run_params(source, params, stats, meta)
    if provenance['head_replaced'] and not replace_head:
      raise ValueError(f'config.init_from={config.init_from}: its head has another class count '
                       f'than config.model.num_classes={config.model.num_classes}; '
                       'evaluation needs the trained head')
    return params, stats, provenance
  if not (epath.Path(paths.absolute(source)) / store.WEIGHTS).is_dir():
    raise FileNotFoundError(
        f'config.init_from={config.init_from}: neither converted weights (a {store.WEIGHTS}/ '
        'folder, python -m stvit_jax.tools.convert) nor a run workdir with checkpoints/ is there')
  model = nnx.merge(graphdef, params, stats, rngs)
  provenance = store.load_weights(model, source, replace_head=replace_head,
                                  name=config.model.name)
  _, params, stats, _ = split(model)
  return params, stats, provenance


def warm_start(config, state, graphdef, rngs, meta, shardings):
  """`state` with its fresh params (and batch stats, and EMA) replaced by config.init_from's."""
  params, stats = jax.device_get((state['params'], state['batch_stats']))
  params, stats, provenance = load(config, graphdef, params, stats, rngs, meta,
                                   replace_head=True)
  logging.info('init_from %s: %s', config.init_from, provenance)
  state = dict(state, params=params, batch_stats=stats)
  if 'ema' in state:
    state['ema'] = params
  return jax.device_put(state, shardings)
