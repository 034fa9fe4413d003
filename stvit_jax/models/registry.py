"""Model names -> constructors: `create("stvit_deit_small", **overrides)`.

A name is `<family>_<size>` (+ `_distilled` for DeiT); the size picks a row
of the family's variant table and overrides replace any constructor argument.
"""
from __future__ import annotations

import inspect

import jax.numpy as jnp
from flax import nnx

from stvit_jax.models import (execution, stvit, stvit_r_dense, stvit_swin, stvit_video_swin,
                              swin, video_swin, vit)

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
  for size in video_swin.VARIANTS:
    table[f'video_swin_{size}'] = (video_swin.VideoSwinTransformer, _swin(size))
  # STViT per frame (a reconstruction, see stvit_video_swin.py): stgm_after chosen
  # so that the measured GMACs are the paper's -27 % (flops.py, README Video).
  for size, stgm_after in (('tiny', 2), ('small', 9)):
    table[f'stvit_video_swin_{size}'] = (stvit_video_swin.STViTVideoSwin,
                                         _swin(size, stgm_after=stgm_after))
    table[f'stvit_r_video_swin_{size}'] = (stvit_video_swin.STViTVideoSwin,
                                           _swin(size, recovery=True))
  return table


MODELS = _table()


def names():
  return list(MODELS)


def options(name, dense=False):
  """Constructor arguments that `create(name, dense=dense, ...)` accepts, with defaults."""
  cls, variant = _lookup(name, dense)
  found = {}
  for klass in reversed(cls.__mro__):  # subclasses pass **kwargs up to SwinTransformer
    if '__init__' in vars(klass):
      for p in inspect.signature(klass.__init__).parameters.values():
        if p.kind == p.KEYWORD_ONLY and p.name != 'rngs':
          found[p.name] = p.default
  found.update(variant)
  found.update(execution.DEFAULTS)  # not constructor arguments: set on the built model
  return found


def _lookup(name, dense=False):
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; valid names: {", ".join(names())}')
  cls, variant = MODELS[name]
  if dense:  # detection / segmentation backbone with the same parameters (spec 4, dense mode)
    valid = [n for n, (c, v) in MODELS.items() if c is stvit_swin.STViTSwin and v['recovery']]
    if name not in valid:
      raise ValueError(f'dense=True exists only for {", ".join(valid)}; got {name!r}')
    cls = stvit_r_dense.STViTRDense
  return cls, variant


def create(name, *, rngs=None, seed=0, dtype='float32', dense=False, pretrained=False,
           **overrides):
  """Builds model `name` with float32 parameters and `dtype` compute.

  `pretrained`: True loads the weights of `name`'s catalogue entry (models/catalogue.py),
  a string those of an address or converted directory (stvit_jax.pretrained: download,
  convert and cache once); another `num_classes` than the weights' gives a fresh head.

  `dense=True` (STViT-R only) gives the detection / segmentation backbone:
  any input size, multi-scale `aux['stage_features']`, same parameters.
  `rngs` defaults to `nnx.Rngs(params=seed, dropout=seed + 1)`.
  """
  if pretrained:
    from stvit_jax import pretrained as hub  # pylint: disable=g-import-not-at-top
    return hub.create(name, pretrained, rngs=rngs, seed=seed, dtype=dtype, dense=dense,
                      **overrides)
  cls, variant = _lookup(name, dense)
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r} is not valid; choose one of {sorted(DTYPES)}')
  valid = options(name, dense)
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f'{name} has no option(s) {unknown}; valid options: '
                     f'{", ".join(sorted(valid))}')
  run = {k: overrides.pop(k) for k in execution.DEFAULTS if k in overrides}
  execution.check(**run)
  rngs = rngs or nnx.Rngs(params=seed, dropout=seed + 1)
  model = cls(**{**variant, **overrides}, dtype=DTYPES[dtype], rngs=rngs)
  return execution.configure(model, **run)
