"""Starting a run from other weights: `config.init_from`.

A run's own checkpoints resume it (checkpoint.py); `init_from` instead replaces the
fresh parameters of step 0 by converted weights (python -m stvit_jax.convert, or
'pretrained' / hf:// / https:// through pretrained.py) or by another run's
parameters, keeping a fresh head when the class count differs.
"""
from __future__ import annotations

import jax
from absl import logging
from flax import nnx

from stvit_jax import checkpoint, paths


def check_init_from(path, source):
  """Converted weights at `source` (`path` resolved), or a user error naming both."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from stvit_jax import weights  # pylint: disable=g-import-not-at-top
  if not (epath.Path(paths.absolute(source)) / weights.WEIGHTS).is_dir():
    raise FileNotFoundError(
        f'config.init_from={path}: neither converted weights (a {weights.WEIGHTS}/ folder, '
        'python -m stvit_jax.convert) nor a run workdir with checkpoints/ is there')


def init_from(config, state, graphdef, rngs, meta, shardings):
  """Replaces the fresh params (and batch stats) by those of `config.init_from`."""
  from stvit_jax import pretrained, train, weights  # pylint: disable=g-import-not-at-top
  params, stats = jax.device_get((state['params'], state['batch_stats']))
  # 'pretrained', hf://, https://: downloaded and converted once into the user's cache.
  source = pretrained.resolve(config.init_from, model=config.model.name,
                              options=train.model_kwargs(config))
  if checkpoint.is_run_checkpoint(source):
    params, stats, provenance = checkpoint.load_run_params(source, params, stats, meta)
  else:
    check_init_from(config.init_from, source)
    model = nnx.merge(graphdef, params, stats, rngs)
    # replace_head: a head of another class count keeps its fresh init; the rest is strict.
    provenance = weights.load_weights(model, source, replace_head=True,
                                      name=config.model.name)
    _, params, stats, _ = train.split(model)
  logging.info('init_from %s: %s', config.init_from, provenance)
  state = dict(state, params=params, batch_stats=stats)
  if 'ema' in state:
    state['ema'] = params
  return jax.device_put(state, shardings)
