"""PyTorch state_dicts -> stvit_jax weights, strictly, by name maps per family.

    python -m stvit_jax.convert --model stvit_r_swin_small --src STViT-R-Swin-S.pth --out DIR
    python -m stvit_jax.convert --model deit_small --src deit_small.safetensors --out DIR \
        --num_classes 10 --img_size 384          # new head, resized position embedding

Sources: `.pth` / `.pt` (needs `pip install 'stvit_jax[torch]'`; a dict whose
'model', 'state_dict' or 'model_ema' entry holds the tensors is unwrapped),
`.safetensors` and `.npz` (no torch). Families and their PyTorch layouts:

  deit_*, stvit_deit_*   timm / facebookresearch DeiT names (`blocks.N.attn.qkv`, `head`, ...)
  swin_*                 Microsoft (`layers.N.downsample` ends stage N, `head`) or
                         timm >= 0.9 (downsample starts stage N+1, `head.fc`); --layout auto
                         tells them apart
  stvit_r_swin_*,        the authors' STViT-R code: Microsoft Swin names, stem
  stvit_swin_*           `patch_embed.proj.{0,2}.{c,bn}`, stage 3 `layers.2.blocks.N`
  video_swin_*,          Video Swin: original release, mmaction2 1.x or torchvision
  stvit_*video_swin_*    swin3d layouts; --inflate from ImageNet Swin (convert_video.py)

Leaves: Linear weight (out, in) -> kernel (in, out); Conv OIHW -> HWIO; norm
weight -> scale; BatchNorm running_mean / running_var -> batch_stats mean / var.
Every source tensor is consumed or ignored by a rule in IGNORED, every model
weight is filled, and any mismatch stops with all offending names at once.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import sys

import numpy as np
from etils import epath
from flax import nnx

from stvit_jax import cli, convert_video, models, names, paths, pos_embed, weights
from stvit_jax.torch_files import FORMATS, WRAPPERS, load_state_dict, sha256, strip_prefix

IGNORED = (  # buffers that the JAX models rebuild as numpy constants
    (re.compile(r'(^|\.)num_batches_tracked$'), 'BatchNorm step counter'),
    (re.compile(r'(^|\.)relative_position_index$'), 'Swin relative_position_index (rebuilt)'),
    (re.compile(r'(^|\.)attn_mask$'), 'Swin shifted-window attn_mask (rebuilt)'),
)
LAYOUTS = ('auto', 'microsoft', 'timm') + convert_video.LAYOUTS


# {'<family>/<layout>': module renames}, from the registry's family records (the
# rules themselves live there, beside each family); Video Swin's from convert_video.
RULES = {**{f'{fam.name}/{layout}': rules for fam in models.FAMILIES.values()
            for layout, rules in fam.layouts.items()},
         **convert_video.RULES}


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
  """The registry's `Family` of model `name`: its layouts are what convert reads."""
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
    return f'video_swin/{layout}', layout
  if layout == 'auto':  # one layout: it; several: detected from the names
    layout = detect_layout(state_dict) if len(fam.layouts) > 1 else next(iter(fam.layouts))
  elif layout not in fam.layouts:
    having = sorted(f'{f.name}_*' for f in models.FAMILIES.values() if layout in f.layouts)
    known = [k for k in fam.layouts if k is not None]
    raise ValueError(f"layout={layout!r} exists only for {', '.join(having)} models; {name} "
                     + (f"uses the {' or '.join(map(repr, known))} layout: use --layout "
                        f"{known[0]} or auto" if known else 'has one layout: use --layout auto'))
  return f'{fam.name}/{layout}', layout


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


def _parse_override(text):
  k, sep, v = text.partition('=')
  if not sep or not k:
    raise argparse.ArgumentTypeError(f'--set {text!r}: expected KEY=VALUE, e.g. drop_path_rate=0.1')
  try:
    return k, ast.literal_eval(v)
  except (ValueError, SyntaxError):
    return k, v


def convert_file(name, src, out, *, key=None, num_classes=None, img_size=None, layout='auto',
                 extra_provenance=None, inflate=False, **overrides):
  """Converts the file `src` for model `name` and writes weights + provenance.json to
  `out` (stvit_jax.weights); returns (provenance, Conversion, state_dict).

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
      'notes': conv.notes, 'tool': 'stvit_jax.convert',
  }
  weights.save_weights(out, model, provenance)
  return provenance, conv, state_dict


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m stvit_jax.convert', description=__doc__)
  parser.add_argument('--model', required=True, help='registry name, e.g. stvit_r_swin_small')
  parser.add_argument('--src', required=True, help='source file: ' + ', '.join(FORMATS))
  parser.add_argument('--out', required=True,
                      help='output directory, local or gs:// (orbax + provenance.json)')
  parser.add_argument('--num_classes', type=int, help='default: the source head; another '
                      'value gives a freshly initialised head')
  parser.add_argument('--img_size', type=int, help="default: the model's; DeiT position "
                      'embeddings are resized to it')
  parser.add_argument('--layout', default='auto', choices=LAYOUTS, help='Swin name layout')
  parser.add_argument('--inflate', action='store_true',
                      help='video models: build from an ImageNet Swin state_dict (.pth, ...) '
                      'or converted image directory (2D -> 3D inflation, fresh head)')
  parser.add_argument('--key', help=f'checkpoint entry holding the state_dict (default: the '
                      f'first of {", ".join(WRAPPERS)} present)')
  parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                      type=_parse_override, help='other model constructor arguments')
  args = parser.parse_args(argv)
  if args.model not in models.names():
    parser.error(f'--model {args.model!r} is not valid; choose one of {", ".join(models.names())}')
  video = family_of(args.model).input_kind == 'video'
  if args.inflate and not video:
    parser.error(f'--inflate builds video models; {args.model} is not one')
  if not (os.path.isfile(args.src) or (args.inflate and os.path.isdir(args.src))):
    parser.error(f'--src {args.src!r}: no such file' + (' or converted image directory'
                                                        if args.inflate else ''))
  if args.inflate and args.num_classes is None and 'num_classes' not in dict(args.overrides):
    parser.error('--inflate drops the ImageNet head: pass --num_classes (400 for Kinetics-400)')
  out = epath.Path(paths.absolute(args.out))
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    # Converted weights are a directory of their own; never mix them into other files.
    parser.error(f'--out {args.out!r} exists and is not an empty directory; choose a new one')

  overrides = dict(args.overrides)
  for field in ('num_classes', 'img_size'):  # --set img_size=S means --img_size S
    if field in overrides:
      if getattr(args, field) is not None:
        parser.error(f'--{field} and --set {field}=... both given; use --{field}')
      setattr(args, field, overrides.pop(field))
  try:
    provenance, conv, state_dict = convert_file(
        args.model, args.src, args.out, key=args.key, num_classes=args.num_classes,
        img_size=args.img_size, layout=args.layout, inflate=args.inflate, **overrides)
  except ConversionError as e:
    sys.exit(f'error: {args.src} does not convert to {args.model}:\n{e}')
  except ValueError as e:  # --inflate of a non-Swin source, a video layout for an image model
    sys.exit(f'error: {e}')
  key, reasons = provenance['source']['key'], provenance['ignored']
  print(f'{args.src}: {len(state_dict)} tensors, {len(conv.consumed)} consumed, '
        f'{len(conv.ignored)} ignored' + (f" (from entry '{key}')" if key else ''))
  for reason, count in sorted(reasons.items()):
    print(f'  ignored {count:4d} x {reason}')
  for note in conv.notes:
    print(f'  {note}')
  if conv.fresh:
    print(f'  freshly initialised: {", ".join(conv.fresh)}')
  print(f'wrote {paths.absolute(args.out)}')
  print(json.dumps(provenance, indent=2, sort_keys=True))


if __name__ == '__main__':
  cli.run(main)
