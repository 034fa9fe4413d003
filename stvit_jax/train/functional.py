"""The model as pure functions, for jit: `split` an NNX model once into a graph definition
and states, `make_apply` a function of (variables, inputs) that merges them inside the
trace. The trainer, evaluation-only runs, warm starts, tools and notebooks all use these.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stvit_jax import models


def input_kind(config):
  """'image' or 'video': what config.model.name takes (its family's record)."""
  return models.family(config.model.name).input_kind



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

