"""Model names -> constructors: `create("stvit_deit_small", **overrides)`.

A name is `<family>_<size>` (+ `_distilled` for DeiT); the size picks a row
of the family's variant table and overrides replace any constructor argument.
"""
from __future__ import annotations

import inspect

import jax.numpy as jnp
from flax import nnx

from stvit_jax.models import stvit, stvit_swin, swin, vit

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def _deit(size, **extra):
  dim, heads = vit.VARIANTS[size]
  return dict(embed_dim=dim, num_heads=heads, **extra)


def _swin(size, **extra):
  dim, depths, heads = swin.VARIANTS[size]
  return dict(embed_dim=dim, depths=depths, num_heads=heads, **extra)


def _table():
  table = {}
  for size in vit.VARIANTS:
    table[f'deit_{size}'] = (vit.VisionTransformer, _deit(size))
    table[f'deit_{size}_distilled'] = (vit.VisionTransformer, _deit(size, distilled=True))
    table[f'stvit_deit_{size}'] = (stvit.STViT, _deit(size))
  for size in swin.VARIANTS:
    table[f'swin_{size}'] = (swin.SwinTransformer, _swin(size))
    table[f'stvit_r_swin_{size}'] = (stvit_swin.STViTSwin, _swin(size, recovery=True))
    table[f'stvit_swin_{size}'] = (stvit_swin.STViTSwin, _swin(size, recovery=False))
  return table


MODELS = _table()


def names():
  return list(MODELS)


def options(name):
  """Constructor arguments that `create(name, ...)` accepts, with defaults."""
  cls, variant = _lookup(name)
  found = {}
  for klass in reversed(cls.__mro__):  # subclasses pass **kwargs up to SwinTransformer
    if '__init__' in vars(klass):
      for p in inspect.signature(klass.__init__).parameters.values():
        if p.kind == p.KEYWORD_ONLY and p.name != 'rngs':
          found[p.name] = p.default
  found.update(variant)
  return found


def _lookup(name):
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; valid names: {", ".join(names())}')
  return MODELS[name]


def create(name, *, rngs=None, seed=0, dtype='float32', **overrides):
  """Builds model `name` with float32 parameters and `dtype` compute.

  `rngs` defaults to `nnx.Rngs(params=seed, dropout=seed + 1)`.
  """
  cls, variant = _lookup(name)
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r} is not valid; choose one of {sorted(DTYPES)}')
  unknown = sorted(set(overrides) - set(options(name)))
  if unknown:
    raise ValueError(f'{name} has no option(s) {unknown}; valid options: '
                     f'{", ".join(sorted(options(name)))}')
  rngs = rngs or nnx.Rngs(params=seed, dropout=seed + 1)
  return cls(**{**variant, **overrides}, dtype=DTYPES[dtype], rngs=rngs)
