"""Video Swin checkpoints and ImageNet-Swin inflation for `python -m stvit_jax.tools.convert`.

    python -m stvit_jax.tools.convert --model video_swin_tiny --src swin_tiny_patch244_window877_kinetics400_1k.pth --out DIR
    python -m stvit_jax.tools.convert --model stvit_video_swin_tiny --src swin_tiny_patch4_window7_224.pth \
        --inflate --num_classes 400 --out DIR

Layouts (--layout auto tells them apart):
  original     SwinTransformer/Video-Swin-Transformer releases: `backbone.*`, `backbone.norm`,
               `cls_head.fc_cls.*` (mmcv checkpoint, tensors under 'state_dict')
  mmaction2    mmaction2 1.x: the same with the final norm named `backbone.norm3`
  torchvision  `swin3d_*`: `features.{0,2,4,6}.J.*` blocks (`mlp.0` / `mlp.3`),
               `features.{1,3,5}` merges, `norm`, `head`

Inflation (docs/video.md section 1, the original `inflate_weights`): the 2D
patch kernel (C, 3, 4, 4) is repeated over the 2 temporal taps and divided by
2; each (169, heads) bias table is repeated 2*8-1 = 15 times (temporal offset
slowest); the ImageNet head is dropped (the video head is fresh); the rest is
copied. STViT layers that replace Swin blocks take those blocks' weights:
q = the first C rows of qkv, kv = the other 2C; their bias tables are unused
and their LayerScales stay fresh.
"""
from __future__ import annotations

import re

import numpy as np

from stvit_jax.weights import layouts, store

LAYOUTS = layouts.VIDEO_LAYOUTS


def detect_layout(state_dict):
  names = list(state_dict)
  if any(n.startswith('features.') for n in names):
    return 'torchvision'
  if any(n.startswith('backbone.norm3.') for n in names):
    return 'mmaction2'
  if any(n.startswith('backbone.') for n in names):
    return 'original'
  sample = ', '.join(sorted(names)[:6])
  raise ValueError("cannot tell the Video Swin layout: no 'backbone.*' (original / mmaction2) "
                   f"or 'features.*' (torchvision) tensors (found e.g. {sample}); an image "
                   'checkpoint needs --inflate, or pass --layout')


def source_classes(state_dict):
  for name in ('cls_head.fc_cls.weight', 'head.weight'):
    if name in state_dict:
      return int(np.shape(state_dict[name])[0])
  return None


def inflate(state_dict, window=(8, 7, 7), patch_t=2):
  """ImageNet Swin (Microsoft or timm names, image-model layout) -> a Video Swin
  state_dict in the original release layout (without a head)."""
  if 'patch_embed.proj.weight' not in state_dict or np.ndim(
      state_dict['patch_embed.proj.weight']) != 4:
    raise ValueError('--inflate needs an ImageNet Swin state_dict with a 2D '
                     "'patch_embed.proj.weight' (C, 3, 4, 4); this one has "
                     f'{sorted(state_dict)[:6]}...')
  timm_layout = not any(n.startswith('layers.0.downsample.') for n in state_dict)
  out, side = {}, (2 * window[1] - 1) * (2 * window[2] - 1)
  for name, value in state_dict.items():
    value = np.asarray(value)
    if name.startswith('head.') or name.endswith(('relative_position_index', 'attn_mask')):
      continue
    if timm_layout:  # timm >= 0.9: downsample starts stage N+1
      name = re.sub(r'^layers\.(\d+)\.downsample\.',
                    lambda m: f'layers.{int(m.group(1)) - 1}.downsample.', name)
    if name == 'patch_embed.proj.weight':
      value = np.repeat(value[:, :, None], patch_t, axis=2) / patch_t
    elif name.endswith('relative_position_bias_table'):
      if value.shape[0] != side:
        raise ValueError(f'{name}: {value.shape[0]} rows, expected {side} for a '
                         f'{window[1]}x{window[2]} window (bicubic resizing is not done)')
      value = np.tile(value, (2 * window[0] - 1, 1))
    out[f'backbone.{name}'] = value
  return out


def to_semantic(state_dict, model):
  """Video Swin state_dict (original layout) -> the STViT video model's stage-3
  blocks: q/kv split out of qkv where the model has an STViT layer.

  Returns (state_dict, notes); the dropped bias tables are listed in notes.
  """
  stage = model.layers[2]
  if not hasattr(stage, 'role'):
    return state_dict, []
  out, notes = dict(state_dict), []
  for i, block in enumerate(stage.blocks):
    if stage.role(i) == 'swin':
      continue
    prefix = f'backbone.layers.2.blocks.{i}.attn.'
    dim = block.attn.q.in_features
    for leaf in ('weight', 'bias'):
      qkv = out.pop(prefix + f'qkv.{leaf}', None)
      if qkv is not None:
        out[prefix + f'q.{leaf}'], out[prefix + f'kv.{leaf}'] = qkv[:dim], qkv[dim:]
    if out.pop(prefix + 'relative_position_bias_table', None) is not None:
      notes.append(f'{prefix}relative_position_bias_table: unused by the STViT layer '
                   f'({stage.role(i)})')
  return out, notes


def image_dir_state_dict(directory):
  """A converted image Swin directory (`python -m stvit_jax.tools.convert --model swin_*`)
  -> its weights under Microsoft's PyTorch names and layouts, for `inflate`."""
  provenance = store.read_provenance(directory)
  if not str(provenance.get('model', '')).startswith('swin_'):
    raise ValueError(f'--inflate --src {directory}: holds {provenance.get("model")!r}; '
                     'inflation starts from an image Swin (swin_tiny / swin_small / swin_base)')
  out = {}
  for name, value in store.read_weights(directory).items():
    collection, path = name.split('/', 1)
    prefix, _, leaf = path.rpartition('.')
    value = np.asarray(value)
    if leaf == 'kernel':
      value = value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)
    leaf = {'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)
    out[f'{prefix}.{leaf}'] = value
  return out
