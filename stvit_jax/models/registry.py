"""Model families and names: `create("stvit_deit_small", **overrides)`, `family(name)`.

A model name is `<family>_<variant>` (`stvit_deit_small`, `deit_small_distilled`);
the variant picks a row of the family's table and overrides replace any
constructor argument. Each `Family` record holds what the tools need to know
about a family, so that no tool matches name prefixes:

  input_kind         'image' (B, H, W, 3) or 'video' (B, T, H, W, 3): `example_input`
  dense_counterpart  the family of the same sizes without semantic tokens
                     (what `benchmark` compares against: stvit_deit -> deit)
  layouts            the names of the PyTorch checkpoint layouts the converter reads
                     (the first is the default; the name maps themselves live in
                     stvit_jax/weights/layouts.py, above the models)
  stgm               which semantic token generation module `visualize` draws:
                     'global' (STViT-DeiT), 'windowed' (STViT-Swin), None
  backbone           the detection / segmentation form with the same parameters
                     (`create(name, backbone=True)`), or None
  input_size         the default image side (`img_size`)

A new family is one `Family(...)` in `FAMILIES`.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from stvit_jax.models import (execution, stvit, stvit_r_dense, stvit_swin, stvit_video_swin,
                              swin, video_swin, vit)

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

# Input shapes per kind, from (batch, side, frames).
INPUT_SHAPES: Mapping[str, Callable] = types.MappingProxyType({
    'image': lambda batch, size, frames: (batch, size, size, 3),
    'video': lambda batch, size, frames: (batch, frames, size, size, 3),
})


@dataclasses.dataclass(frozen=True)
class Family:
  """What the tools know about one model family (see the module docstring)."""
  name: str
  cls: type
  variants: Mapping[str, Mapping]         # variant -> constructor arguments
  input_kind: str = 'image'
  dense_counterpart: str | None = None     # a family name
  layouts: tuple = (None,)                 # checkpoint layouts it reads; the first is the default
  stgm: str | None = None
  backbone: type | None = None
  input_size: int = 224
  input_frames: int | None = None          # video: frames per clip

  def __post_init__(self):
    if self.input_kind not in INPUT_SHAPES:
      raise ValueError(f'Family {self.name}: input_kind={self.input_kind!r} is not one of '
                       f'{sorted(INPUT_SHAPES)}')

  def model_names(self):
    return [f'{self.name}_{v}' for v in self.variants]

  def example_input(self, batch=1, size=None, frames=None, dtype=jnp.float32):
    """A `jax.ShapeDtypeStruct` of `batch` inputs at `size` (default `input_size`)."""
    shape = INPUT_SHAPES[self.input_kind](batch, size or self.input_size,
                                          frames or self.input_frames)
    return jax.ShapeDtypeStruct(shape, dtype)


def _deit(**extra):
  return {size: dict(embed_dim=dim, num_heads=heads, **extra)
          for size, (dim, heads) in vit.VARIANTS.items()}


def _swin(**extra):
  return {size: dict(embed_dim=dim, depths=depths, num_heads=heads, **extra)
          for size, (dim, depths, heads) in swin.VARIANTS.items()}


_SWIN_LAYOUTS = ('microsoft', 'timm')
_STVIT_R_LAYOUTS = ('microsoft',)     # the authors' code: Microsoft Swin names, a conv stem
_VIDEO_LAYOUTS = ('original', 'mmaction2', 'torchvision')

FAMILIES = {f.name: f for f in (
    Family('deit', vit.VisionTransformer,
           {k: v for size, kw in _deit().items()
            for k, v in ((size, kw), (f'{size}_distilled', dict(kw, distilled=True)))}),
    Family('stvit_deit', stvit.STViT, _deit(), dense_counterpart='deit', stgm='global'),
    Family('swin', swin.SwinTransformer, _swin(), layouts=_SWIN_LAYOUTS),
    Family('stvit_r_swin', stvit_swin.STViTSwin, _swin(recovery=True),
           dense_counterpart='swin', layouts=_STVIT_R_LAYOUTS, stgm='windowed',
           backbone=stvit_r_dense.STViTRDense),
    Family('stvit_swin', stvit_swin.STViTSwin, _swin(recovery=False),
           dense_counterpart='swin', layouts=_STVIT_R_LAYOUTS, stgm='windowed'),
    # Video Swin: (B, T, H, W, 3) clips, 32 x 224 x 224 by default.
    Family('video_swin', video_swin.VideoSwinTransformer, _swin(), input_kind='video',
           input_frames=32, layouts=_VIDEO_LAYOUTS),
    # STViT per frame (a reconstruction, see stvit_video_swin.py): stgm_after chosen
    # so that the measured GMACs are the paper's -27 % (tools/flops.py, README Video).
    Family('stvit_video_swin', stvit_video_swin.STViTVideoSwin,
           {s: dict(_swin()[s], stgm_after=a) for s, a in (('tiny', 2), ('small', 9))},
           input_kind='video', input_frames=32, dense_counterpart='video_swin',
           layouts=_VIDEO_LAYOUTS, stgm='windowed'),
    Family('stvit_r_video_swin', stvit_video_swin.STViTVideoSwin,
           {s: _swin(recovery=True)[s] for s in ('tiny', 'small')},
           input_kind='video', input_frames=32, dense_counterpart='video_swin',
           layouts=_VIDEO_LAYOUTS, stgm='windowed'),
)}


def _model_table():
  # Sizes outermost, as the zoo table lists them: deit_tiny, deit_tiny_distilled,
  # stvit_deit_tiny, deit_small, ...; then the Swin sizes.
  table = {}
  for group in (('deit', 'stvit_deit'), ('swin', 'stvit_r_swin', 'stvit_swin'),
                ('video_swin',), ('stvit_video_swin', 'stvit_r_video_swin')):
    sizes = FAMILIES[group[0]].variants
    for size in [s for s in sizes if '_' not in s]:
      for fam in (FAMILIES[g] for g in group):
        for variant, kwargs in fam.variants.items():
          if variant == size or variant.startswith(f'{size}_'):
            table[f'{fam.name}_{variant}'] = (fam, kwargs)
  for fam in FAMILIES.values():  # families added later: in their own order
    for variant, kwargs in fam.variants.items():
      table.setdefault(f'{fam.name}_{variant}', (fam, kwargs))
  return table


MODELS = _model_table()


def names():
  return list(MODELS)


def family(name):
  """The `Family` of a family name ('stvit_deit') or model name ('stvit_deit_small')."""
  if name in FAMILIES:
    return FAMILIES[name]
  if name in MODELS:
    return MODELS[name][0]
  raise ValueError(f'unknown model {name!r}; valid names: {", ".join(names())}')


def family_of(model):
  """The `Family` whose class built `model` (an nnx.Module, abstract or not), or None."""
  for fam in FAMILIES.values():
    if type(model) is fam.cls:  # pylint: disable=unidiomatic-typecheck
      return fam
  return None


def dense_counterpart(name):
  """'stvit_deit_small' -> 'deit_small', 'stvit_r_swin_small' -> 'swin_small'; None for a
  model without one."""
  fam = family(name)
  if fam.dense_counterpart is None:
    return None
  other = f'{fam.dense_counterpart}{name[len(fam.name):]}'
  return other if other in MODELS else None


def input_kind(model):
  """'image' or 'video' for an nnx.Module: its family's; for a class outside the
  registry, its `input_kind` attribute, else 'image'."""
  fam = family_of(model)
  return fam.input_kind if fam else getattr(type(model), 'input_kind', 'image')


def example_input(model, batch=1, size=None, frames=None):
  """Abstract inputs of `batch` examples for `model` (a name or an nnx.Module) at `size`
  (default: the model's `img_size`) and, for clips, `frames` (default: the model's
  `num_frames`, else the family's)."""
  fam = family(model) if isinstance(model, str) else family_of(model)
  if fam is None:  # a module of a class outside the registry
    fam = Family('unregistered', type(model), {}, input_kind=input_kind(model))
  size = size or getattr(model, 'img_size', None)
  frames = frames or getattr(model, 'num_frames', None) or fam.input_frames
  return fam.example_input(batch, size, frames)


def options(name, backbone=False):
  """Constructor arguments that `create(name, backbone=backbone, ...)` accepts, with defaults."""
  cls, variant = _lookup(name, backbone)
  found = {}
  for klass in reversed(cls.__mro__):  # subclasses pass **kwargs up to SwinTransformer
    if '__init__' in vars(klass):
      for p in inspect.signature(klass.__init__).parameters.values():
        if p.kind == p.KEYWORD_ONLY and p.name != 'rngs':
          found[p.name] = p.default
  found.update(variant)
  found.update(execution.DEFAULTS)  # not constructor arguments: set on the built model
  return found


def _lookup(name, backbone=False, keyword='backbone'):
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; valid names: {", ".join(names())}')
  fam, variant = MODELS[name]
  if not backbone:
    return fam.cls, variant
  if fam.backbone is None:
    valid = [n for n, (f, _) in MODELS.items() if f.backbone is not None]
    raise ValueError(f'{keyword}=True exists only for {", ".join(valid)}; got {name!r}')
  return fam.backbone, variant


def create(name, *, rngs=None, seed=0, dtype='float32', backbone=False, dense=None,
           **overrides):
  """Builds the architecture `name` (freshly initialised) with float32 parameters and
  `dtype` compute. With weights: `stvit_jax.create(name, pretrained=...)`.

  `backbone=True` (STViT-R only) gives the detection / segmentation backbone
  (docs/models.md section 4, "dense mode"): any input size, multi-scale
  `aux['stage_features']`, same parameters. `dense=` is its former name, still
  accepted. `rngs` defaults to `nnx.Rngs(params=seed, dropout=seed + 1)`.
  """
  keyword = 'backbone'
  if dense is not None:
    backbone, keyword = backbone or dense, 'dense'
  cls, variant = _lookup(name, backbone, keyword)
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r} is not valid; choose one of {sorted(DTYPES)}')
  valid = options(name, backbone)
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f'{name} has no option(s) {unknown}; valid options: '
                     f'{", ".join(sorted(valid))}')
  run = {k: overrides.pop(k) for k in execution.DEFAULTS if k in overrides}
  execution.check(**run)
  rngs = rngs or nnx.Rngs(params=seed, dropout=seed + 1)
  model = cls(**{**variant, **overrides}, dtype=DTYPES[dtype], rngs=rngs)
  return execution.configure(model, **run)


__all__ = ['Family', 'FAMILIES', 'create', 'dense_counterpart', 'example_input', 'family',
           'family_of', 'names', 'options']
