"""Converts a PyTorch checkpoint into stvit_jax weights (a directory), strictly.

    python -m stvit_jax.tools.convert --model stvit_r_swin_small --src STViT-R-Swin-S.pth --out DIR
    python -m stvit_jax.tools.convert --model deit_small --src deit_small.safetensors --out DIR \
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
  stvit_*video_swin_*    swin3d layouts; --inflate from ImageNet Swin (weights/convert_video.py)

Every source tensor is consumed or ignored (buffers the models rebuild), every
model weight is filled, and any mismatch stops with all offending names at once;
nothing is written before the conversion succeeds.
"""
from __future__ import annotations

import json
import os
import sys

from etils import epath

from stvit_jax import cli, models, paths
from stvit_jax.runtime import compile_cache
from stvit_jax.weights import convert
from stvit_jax.weights.torch_files import FORMATS, WRAPPERS


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m stvit_jax.tools.convert', description=__doc__)
  parser.add_argument('--model', required=True, help='registry name, e.g. stvit_r_swin_small')
  parser.add_argument('--src', required=True, help='source file: ' + ', '.join(FORMATS))
  parser.add_argument('--out', required=True,
                      help='output directory, local or gs:// (orbax + provenance.json)')
  parser.add_argument('--num_classes', type=int, help='default: the source head; another '
                      'value gives a freshly initialised head')
  parser.add_argument('--img_size', type=int, help="default: the model's; DeiT position "
                      'embeddings are resized to it')
  parser.add_argument('--layout', default='auto', choices=convert.LAYOUTS, help='Swin name layout')
  parser.add_argument('--inflate', action='store_true',
                      help='video models: build from an ImageNet Swin state_dict (.pth, ...) '
                      'or converted image directory (2D -> 3D inflation, fresh head)')
  parser.add_argument('--key', help=f'checkpoint entry holding the state_dict (default: the '
                      f'first of {", ".join(WRAPPERS)} present)')
  parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                      type=cli.key_value, help='other model constructor arguments')
  compile_cache.add_flag(parser)
  args = parser.parse_args(argv)
  compile_cache.enable(args.compilation_cache_dir)
  if args.model not in models.names():
    parser.error(f'--model {args.model!r} is not valid; choose one of {", ".join(models.names())}')
  video = convert.family_of(args.model).input_kind == 'video'
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
    provenance, conv, state_dict = convert.convert_file(
        args.model, args.src, args.out, key=args.key, num_classes=args.num_classes,
        img_size=args.img_size, layout=args.layout, inflate=args.inflate, **overrides)
  except convert.ConversionError as e:
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
