"""PyTorch state_dicts -> stvit_jax weights, strictly, by name maps per family.

The library behind `python -m stvit_jax.tools.convert` (the command and its
sources, families and layouts are described there) and the hub's conversions:

    plan(name, state_dict, ...)        -> (Conversion, constructor kwargs, layout); no model built
    convert(name, state_dict, ...)     -> (model, Conversion, layout)
    convert_file(name, src, out, ...)  -> writes weights + provenance.json (weights/store.py)

The name maps are weights/layouts.py's, chosen per family and layout (`rules_for`).
Leaves: Linear weight (out, in) -> kernel (in, out); Conv OIHW -> HWIO; norm
weight -> scale; BatchNorm running_mean / running_var -> batch_stats mean / var.
Every source tensor is consumed or ignored by a rule in IGNORED, every model
weight is filled, and any mismatch stops with all offending names at once.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
from flax import nnx

from stvit_jax import models, names
from stvit_jax.weights import convert_video, layouts, pos_embed
from stvit_jax.weights import store
from stvit_jax.weights.torch_files import load_state_dict, sha256, strip_prefix

IGNORED = (  # buffers that the JAX models rebuild as numpy constants
    (re.compile(r'(^|\.)num_batches_tracked$'), 'BatchNorm step counter'),
    (re.compile(r'(^|\.)relative_position_index$'), 'Swin relative_position_index (rebuilt)'),
    (re.compile(r'(^|\.)attn_mask$'), 'Swin shifted-window attn_mask (rebuilt)'),
)
LAYOUTS = ('auto', 'microsoft', 'timm') + convert_video.LAYOUTS


RULES = layouts.RULES  # {'<family>/<layout>': module renames}


class ConversionError(ValueError):
  """A state_dict that does not fit the model; the message names every offender."""


@dataclasses.dataclass
class Conversion:
  arrays: dict       # model weight ('params/a.b.kernel') -> np.ndarray in the model's layout
  consumed: dict     # source name -> model weight
  ignored: dict      # source name -> reason
  fresh: list        # model weights left at their initialisation (replaced head)
  notes: list        # what else was done (casts, resizes)


def family_of(name):
  """The registry's `Family` of model `name`: it names the layouts convert reads."""
  try:
    return models.family(name)
  except ValueError:
    raise ValueError(f'no name map for model {name!r}; valid models: '
                     f'{", ".join(models.names())}') from None


def detect_layout(state_dict):
  """'microsoft' or 'timm' from where Swin's downsample layers and head live."""
  # As timm does: only Microsoft's layout has a downsample in stage 0 (heads may be absent).
  if any(n.startswith('layers.0.downsample.') for n in state_dict):
    return 'microsoft'
  if any(re.match(r'layers\.\d+\.downsample\.', n) for n in state_dict):
    return 'timm'
  if looks_like_vit(state_dict):
    raise ConversionError(f'this is not a Swin checkpoint: it has no layers.N.* tensors '
                          f'({source_kind(state_dict)}); convert it with --model of that family')
  raise ConversionError("cannot tell the Swin layout: no 'layers.N.downsample' tensors; pass "
                        "--layout with one of 'microsoft', 'timm'")


def looks_like_vit(state_dict):
  return 'cls_token' in state_dict and any(n.startswith('blocks.') for n in state_dict)


def source_kind(state_dict):
  """What a state_dict looks like, from its names, for messages."""
  if looks_like_vit(state_dict):
    return 'it looks like a DeiT / ViT checkpoint: cls_token, blocks.N.*'
  return 'its first tensors are ' + ', '.join(sorted(state_dict)[:4])



def rules_for(name, state_dict, layout='auto'):
  """(RULES key, resolved layout) for model `name` and this source."""
  if layout not in LAYOUTS:
    raise ValueError(f'layout={layout!r} is not valid; choose one of {list(LAYOUTS)}')
  fam = family_of(name)
  video = fam.input_kind == 'video'
  if video or layout in convert_video.LAYOUTS:
    if not video:
      raise ValueError(f'layout={layout!r} is a Video Swin layout; {name} is an image model')
    try:
      layout = convert_video.detect_layout(state_dict) if layout == 'auto' else layout
    except ValueError as e:
      raise ConversionError(str(e)) from None
    if layout not in convert_video.LAYOUTS:
      raise ValueError(f'layout={layout!r} is not a Video Swin layout; choose one of '
                       f'{list(convert_video.LAYOUTS)}')
    return layouts.key('video_swin', layout), layout
  if layout == 'auto':  # one layout: it; several: detected from the names
    layout = detect_layout(state_dict) if len(fam.layouts) > 1 else next(iter(fam.layouts))
  elif layout not in fam.layouts:
    having = sorted(f'{f.name}_*' for f in models.FAMILIES.values() if layout in f.layouts)
    known = [k for k in fam.layouts if k is not None]
    raise ValueError(f"layout={layout!r} exists only for {', '.join(having)} models; {name} "
                     + (f"uses the {' or '.join(map(repr, known))} layout: use --layout "
                        f"{known[0]} or auto" if known else 'has one layout: use --layout auto'))
  return layouts.key(fam.name, layout), layout


def _rename(name, rules, forward):
  for src_re, to_model, model_re, to_src in rules:
    pattern, repl = (src_re, to_model) if forward else (model_re, to_src)
    new = re.sub(pattern, repl, name, count=1)
    if new != name:
      return new
  return name


def model_name(source, ndim, rules, targets):
  """Source tensor name -> model weight name ('params/...' or 'batch_stats/...')."""
  prefix, _, leaf = _rename(source, rules, True).rpartition('.')
  path = f'{prefix}.' if prefix else ''
  if leaf == 'running_mean':
    return f'batch_stats/{path}mean'
  if leaf == 'running_var':
    return f'batch_stats/{path}var'
  if leaf == 'weight':
    scale = f'params/{path}scale'
    return scale if scale in targets or (ndim == 1 and f'params/{path}kernel' not in targets) \
        else f'params/{path}kernel'
  return f'params/{path}{leaf}'


def source_name(target, rules):
  """Model weight name -> the source tensor name that would fill it."""
  collection, path = target.split('/', 1)
  prefix, _, leaf = path.rpartition('.')
  leaf = {'kernel': 'weight', 'scale': 'weight', 'mean': 'running_mean',
          'var': 'running_var'}.get(leaf, leaf)
  return _rename(f'{prefix}.{leaf}' if prefix else leaf, rules, False)


def to_model_layout(target, value):
  if target.endswith('.kernel') and value.ndim == 2:
    return value.T                       # Linear (out, in) -> (in, out)
  if target.endswith('.kernel') and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)   # Conv OIHW -> HWIO
  if target.endswith('.kernel') and value.ndim == 5:
    return value.transpose(2, 3, 4, 1, 0)  # Conv3d OIDHW -> DHWIO
  return value


def convert_state_dict(state_dict, targets, rules, *, replace_head=False, num_prefix=None,
                       allow_fresh=()):
  """Maps `state_dict` ({name: array}) onto `targets` ({model weight: shape}).

  `replace_head`: head tensors of another shape are ignored and the model's
  head stays fresh. `num_prefix`: resize a `pos_embed` of another grid size
  (that many class / distillation tokens are kept as they are); None refuses.
  `allow_fresh`: regexes of model weights that may stay at their initialisation
  (STViT LayerScales of an inflated model). Raises ConversionError naming every
  unexpected, missing and mis-shaped tensor.
  """
  arrays, consumed, ignored, notes = {}, {}, {}, []
  unexpected, misshaped, fresh, seen = [], [], set(), set()
  for src, value in state_dict.items():
    reason = next((why for pattern, why in IGNORED if pattern.search(src)), None)
    if reason:
      ignored[src] = reason
      continue
    value = np.asarray(value)
    tgt = model_name(src, value.ndim, rules, targets)
    if tgt not in targets:
      unexpected.append(f'  unexpected: {src} {tuple(value.shape)} (would be {tgt}, '
                        'which the model does not have)')
      continue
    if tgt in arrays:
      unexpected.append(f'  duplicate: {src} and {next(s for s, t in consumed.items() if t == tgt)}'
                        f' both map to {tgt}')
      continue
    seen.add(tgt)
    array = to_model_layout(tgt, value)
    shape = tuple(targets[tgt])
    if array.shape != shape:
      if tgt.endswith('pos_embed') and num_prefix is not None and array.shape[2:] == shape[2:]:
        try:
          array = pos_embed.resize(array, shape[1], num_prefix)
        except ValueError as e:
          raise ConversionError(str(e)) from None
        notes.append(f'{src}: resized {value.shape[1]} -> {shape[1]} tokens (bicubic, antialias)')
      elif replace_head and names.head_is_replaced(tgt, array.shape, shape):
        ignored[src] = f'head replaced: source {tuple(value.shape)}, model {shape}'
        fresh.add(tgt)
        continue
      else:
        hint = (' (another resolution: pass img_size to resize it)' if tgt.endswith('pos_embed')
                else ' (another class count: pass num_classes to replace it)' if names.is_head(tgt)
                else '')
        misshaped.append(f'  shape mismatch: {src} {tuple(value.shape)} -> {tgt} '
                         f'{tuple(array.shape)}, the model needs {shape}{hint}')
        continue
    if array.dtype.kind == 'f' and array.dtype != np.float32:
      notes.append(f'{src}: cast {array.dtype} -> float32')
    if array.dtype.kind not in 'f':
      misshaped.append(f'  dtype: {src} is {array.dtype}, not a float tensor')
      continue
    arrays[tgt] = np.asarray(array, np.float32)
    consumed[src] = tgt
  # A replaced head is replaced whole: no fresh kernel beside a loaded bias.
  heads = {t.rsplit('.', 1)[0] for t in fresh}
  for tgt in [t for t in arrays if t.rsplit('.', 1)[0] in heads]:
    src = next(s for s, t in consumed.items() if t == tgt)
    del arrays[tgt], consumed[src]
    ignored[src] = 'head replaced'
    fresh.add(tgt)
  for t in targets:
    if t not in seen and any(re.search(p, t) for p in allow_fresh):
      seen.add(t)
      fresh.add(t)
  missing = [f'  missing: {t} {tuple(targets[t])} (expected source tensor '
             f'{source_name(t, rules)})' for t in targets if t not in seen]
  problems = unexpected + missing + misshaped
  if problems:
    raise ConversionError(f'{len(problems)} problem(s) converting the state_dict:\n'
                          + '\n'.join(problems))
  return Conversion(arrays, consumed, ignored, sorted(fresh), notes)


def source_classes(state_dict):
  head = state_dict.get('head.weight', state_dict.get('head.fc.weight'))
  if head is None:
    return convert_video.source_classes(state_dict)
  return int(np.shape(head)[0])


def plan(name, state_dict, *, num_classes=None, img_size=None, layout='auto', **overrides):
  """Converts `state_dict` for model `name` without building it (shapes come from
  `nnx.eval_shape`); returns (Conversion, constructor kwargs, resolved layout).

  `num_classes` defaults to the source head's; another value gives a fresh
  head. An `img_size` other than the source's resizes a DeiT position embedding.
  """
  rules_key, layout = rules_for(name, state_dict, layout)
  found = source_classes(state_dict)
  num_classes = num_classes or found or models.options(name)['num_classes']
  kwargs = dict(overrides, num_classes=num_classes)
  if img_size is not None:
    kwargs['img_size'] = img_size
  abstract = nnx.eval_shape(lambda: models.create(name, **kwargs))
  targets = {k: tuple(v.shape) for k, v in names.weight_names(abstract).items()}
  num_prefix = None
  if img_size is not None and 'params/pos_embed' in targets:
    grid = abstract.img_size // abstract.patch_embed.patch_size
    num_prefix = targets['params/pos_embed'][1] - grid * grid
  notes, allow_fresh = [], ()
  if rules_key.startswith('video_swin/'):  # STViT layers take their Swin blocks' weights
    if rules_key != 'video_swin/original':
      state_dict = {_rename(k, RULES[rules_key], True): v for k, v in state_dict.items()}
      state_dict = {_rename(k, RULES['video_swin/original'], False): v
                    for k, v in state_dict.items()}
      rules_key = 'video_swin/original'
    state_dict, notes = convert_video.to_semantic(state_dict, abstract)
    allow_fresh = (r'\.layer_scale_[12]$',)
    if found is None:  # inflated or backbone-only: the video head starts fresh
      allow_fresh += (r'^params/head\.',)
  conversion = convert_state_dict(
      state_dict, targets, RULES[rules_key],
      replace_head=found is not None and num_classes != found, num_prefix=num_prefix,
      allow_fresh=allow_fresh)
  conversion.notes.extend(notes)
  return conversion, kwargs, layout


def convert(name, state_dict, **options):
  """`plan`, then builds model `name` and fills it; returns (model, Conversion, layout).
  Only the weights in `Conversion.fresh` (a replaced head) keep their initialisation."""
  conversion, kwargs, layout = plan(name, state_dict, **options)
  model = models.create(name, **kwargs)
  _fill(model, conversion)
  return model, conversion, layout


def _fill(model, conversion):
  for key, var in names.weight_variables(model).items():
    if key in conversion.arrays:
      var.set_value(conversion.arrays[key])


def convert_file(name, src, out, *, key=None, num_classes=None, img_size=None, layout='auto',
                 extra_provenance=None, inflate=False, **overrides):
  """Converts the file `src` for model `name` and writes weights + provenance.json to
  `out` (stvit_jax.weights.store); returns (provenance, Conversion, state_dict).

  `inflate`: `src` is an ImageNet Swin (file, or converted image directory) that
  becomes a video model by the 2D -> 3D rule of convert_video.inflate."""
  if inflate and os.path.isdir(src):
    state_dict, key = convert_video.image_dir_state_dict(src), None
  else:
    state_dict, key = load_state_dict(src, key)
  state_dict, stripped = strip_prefix(state_dict)
  if inflate:
    state_dict = convert_video.inflate(state_dict)
  conv, kwargs, layout = plan(name, state_dict, num_classes=num_classes, img_size=img_size,
                              layout=layout, **overrides)
  if conv.fresh:  # a replaced head needs its initialisation
    model = models.create(name, **kwargs)
  else:  # every weight comes from the source: shapes only, no initialiser compiled or run
    model = nnx.eval_shape(lambda: models.create(name, **kwargs))
  _fill(model, conv)
  classes = model.head.out_features
  options = dict(overrides, num_classes=classes)
  if img_size is not None:
    options['img_size'] = img_size
  reasons = {}
  for reason in conv.ignored.values():
    reasons[reason] = reasons.get(reason, 0) + 1
  provenance = {
      'model': name, 'num_classes': classes, 'options': options,
      'source': {'file': os.path.basename(os.path.normpath(src)),
                 'sha256': sha256(src) if os.path.isfile(src) else None,
                 'format': (os.path.splitext(src)[1].lstrip('.') if os.path.isfile(src)
                            else 'stvit_jax weights directory'),
                 'key': key, 'inflated': inflate,
                 'layout': layout, 'stripped_module_prefix': stripped,
                 'tensors': len(state_dict), **(extra_provenance or {})},
      'consumed': len(conv.consumed), 'ignored': reasons, 'fresh': conv.fresh,
      'notes': conv.notes, 'tool': 'stvit_jax.tools.convert',
  }
  store.save_weights(out, model, provenance)
  return provenance, conv, state_dict
