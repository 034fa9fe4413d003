"""Checkpoint name maps: how PyTorch module names become model paths, per layout.

A family's record (stvit_jax.models.registry) names the layouts it reads; the maps
live here, in the weights layer, because only the converter needs them. Each map
is a sequence of module renames `(source regex, to model, model regex, to source)`,
tried in order, the first that matches wins; leaves (weight -> kernel / scale,
running_mean -> mean, ...) are translated afterwards by stvit_jax.weights.convert,
and a name no rule matches is the same on both sides.

    RULES['swin/timm']                the table of one (family, layout)
    rules('stvit_r_swin', 'microsoft')
"""
from __future__ import annotations

import types


def _shift_stage(delta):
  return lambda m: f'layers.{int(m.group(1)) + delta}.downsample.'


def _tv_block(m):
  sub = {'mlp.0.': 'mlp.fc1.', 'mlp.3.': 'mlp.fc2.'}.get(m.group(3), m.group(3))
  return f'layers.{int(m.group(1)) // 2}.blocks.{m.group(2)}.{sub}'


def _tv_block_back(m):
  sub = {'mlp.fc1.': 'mlp.0.', 'mlp.fc2.': 'mlp.3.'}.get(m.group(3), m.group(3))
  return f'features.{2 * int(m.group(1))}.{m.group(2)}.{sub}'


SAME_NAMES = ()  # timm / facebookresearch DeiT, Microsoft Swin: the model uses their names
SWIN_TIMM = (  # timm >= 0.9: the downsample starts stage N+1; the head is head.fc
    (r'^layers\.(\d+)\.downsample\.', _shift_stage(-1),
     r'^layers\.(\d+)\.downsample\.', _shift_stage(+1)),
    (r'^head\.fc\.', 'head.', r'^head\.', 'head.fc.'),
)
STVIT_R = (  # the authors' STViT-R code: Microsoft Swin names, a conv stem, global init
    (r'^patch_embed\.proj\.2\.', 'patch_embed.proj.1.',
     r'^patch_embed\.proj\.1\.', 'patch_embed.proj.2.'),
    (r'^layers\.2\.semantic_token2$', 'layers.2.global_init',
     r'^layers\.2\.global_init$', 'layers.2.semantic_token2'),
)
# Video Swin (docs/video.md section 1). STViT video models read the same files: the
# converter maps them onto video_swin names first (weights/convert_video.to_semantic).
VIDEO_ORIGINAL = (  # SwinTransformer/Video-Swin-Transformer releases (mmcv checkpoints)
    (r'^cls_head\.fc_cls\.', 'head.', r'^head\.', 'cls_head.fc_cls.'),
    (r'^backbone\.', '', r'^', 'backbone.'),
)
VIDEO_MMACTION2 = (  # mmaction2 1.x: the same, the final norm named backbone.norm3
    (r'^cls_head\.fc_cls\.', 'head.', r'^head\.', 'cls_head.fc_cls.'),
    (r'^backbone\.norm3\.', 'norm.', r'^norm\.', 'backbone.norm3.'),
    (r'^backbone\.', '', r'^', 'backbone.'),
)
VIDEO_TORCHVISION = (  # torchvision swin3d_*: features.{0,2,4,6}.J blocks, odd ones merge
    (r'^features\.(\d*[02468])\.(\d+)\.(mlp\.[03]\.|)', _tv_block,
     r'^layers\.(\d+)\.blocks\.(\d+)\.(mlp\.fc[12]\.|)', _tv_block_back),
    (r'^features\.(\d+)\.', lambda m: f'layers.{(int(m.group(1)) - 1) // 2}.downsample.',
     r'^layers\.(\d+)\.downsample\.', lambda m: f'features.{2 * int(m.group(1)) + 1}.'),
)

VIDEO_LAYOUTS = ('original', 'mmaction2', 'torchvision')

# '<family>/<layout>' -> renames; a family of one unnamed layout has '<family>/None'.
RULES = types.MappingProxyType({
    'deit/None': SAME_NAMES,
    'stvit_deit/None': SAME_NAMES,
    'swin/microsoft': SAME_NAMES,
    'swin/timm': SWIN_TIMM,
    'stvit_r_swin/microsoft': STVIT_R,
    'stvit_swin/microsoft': STVIT_R,
    'video_swin/original': VIDEO_ORIGINAL,
    'video_swin/mmaction2': VIDEO_MMACTION2,
    'video_swin/torchvision': VIDEO_TORCHVISION,
})


def key(family, layout):
  return f'{family}/{layout}'


def rules(family, layout):
  """The renames of `family`'s checkpoint `layout`; KeyError names the known tables."""
  try:
    return RULES[key(family, layout)]
  except KeyError:
    raise KeyError(f'no name map {key(family, layout)!r}; known: {", ".join(RULES)}') from None
