"""A model with its weights: `stvit_jax.create(name, pretrained=...)`, as timm.create_model.

    stvit_jax.create('stvit_deit_small')                         # fresh (= models.create)
    stvit_jax.create('stvit_r_swin_small', pretrained=True)      # the catalogue entry
    stvit_jax.create('deit_small', pretrained='hf://timm/deit_small_patch16_224.fb_in1k/model.safetensors')
    stvit_jax.create('deit_small', pretrained=DIR, num_classes=10)   # converted weights, new head
    factory.from_directory(DIR)                                  # the model DIR names
    factory.load(model, source, name=...)                        # into a model you built

This sits above both the registry (stvit_jax.models, architectures only) and the
weights store and hub, so that neither of those imports the other's side.
"""
from __future__ import annotations

import os

import jax
from flax import nnx

from stvit_jax import models
from stvit_jax.weights import hub, store


def create(name, *, pretrained=False, replace_head=None, **kwargs):
  """`models.create(name, **kwargs)`, filled with the weights of `pretrained`.

  `pretrained`: False (fresh weights), True (`name`'s catalogue entry), an address
  (hf://..., https://...: downloaded and converted once into the cache) or a
  directory written by `python -m stvit_jax.tools.convert`. A `num_classes` other
  than the weights' gives a fresh head (`replace_head` forces either way).
  """
  if not pretrained:
    return models.create(name, **kwargs)
  source = hub.KEYWORD if pretrained is True else os.fspath(pretrained)
  directory = hub.resolve(source, model=name, options=kwargs)
  provenance = store.read_provenance(directory)
  if provenance.get('model', name) != name:
    raise hub.PretrainedError(f'{source} holds weights of {provenance["model"]}, not of {name}')
  build = {**provenance.get('options', {}), **kwargs}
  if replace_head is None:
    replace_head = kwargs.get('num_classes', provenance.get('num_classes')) != \
        provenance.get('num_classes')
  if replace_head or kwargs.get('rngs') is not None:  # fresh weights: initialise for real
    model = models.create(name, **build)
    store.load_weights(model, directory, replace_head=replace_head)
    return model
  return _loaded(name, build, directory)


def from_directory(directory, *, replace_head=False, **overrides):
  """Builds the model named in `directory`'s provenance and loads its weights.

  An address from the catalogue (hf://..., https://...) names its model itself.
  `overrides` replace constructor arguments recorded at conversion (e.g.
  `num_classes=10` with `replace_head=True` for fine-tuning on 10 classes).
  """
  directory = hub.resolve(directory)
  provenance = store.read_provenance(directory)
  model = models.create(provenance['model'], **{**provenance.get('options', {}), **overrides})
  store.load_weights(model, directory, replace_head=replace_head)
  return model


def load(model, source, *, replace_head=False, name=None, options=None) -> dict:
  """Fills `model` in place from `source` (a directory or an address) and returns the
  provenance dict; an address is converted for the registry model `name` built with
  constructor `options` (see stvit_jax.weights.hub.resolve)."""
  directory = hub.resolve(source, model=name, options=options)
  return store.load_weights(model, directory, replace_head=replace_head, name=name)


def _loaded(name, build, directory):
  """The model with every weight read from `directory` and nothing initialised: built
  abstractly (no initialiser compiled or run, which takes longer than reading), then
  the rng streams given concrete keys derived from `seed`, one per stream."""
  model = nnx.eval_shape(lambda: models.create(name, **build))
  store.load_weights(model, directory)
  graphdef, loaded, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
  base = jax.random.key(build.get('seed', 0))
  leaves, treedef = jax.tree.flatten(rest)

  def concrete(i, x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.split(jax.random.fold_in(base, i), x.shape) if x.shape else \
          jax.random.fold_in(base, i)
    return jax.numpy.zeros(x.shape, x.dtype)  # stream counters

  rest = jax.tree.unflatten(treedef, [concrete(i, x) for i, x in enumerate(leaves)])
  return nnx.merge(graphdef, loaded, rest)
