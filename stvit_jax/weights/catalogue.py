"""Known public weights, by model name: where they live and what they score.

    from stvit_jax.weights import catalogue
    catalogue.get('stvit_r_swin_small').address   # 'hf://csncsn/STViT-R/STViT-R-Swin-S.pth'

`stvit_jax.create(name, pretrained=True)` and `--config.init_from=pretrained`
fetch an entry through `stvit_jax.weights.hub` (download, convert once, cache).
`python -m stvit_jax.tools.pretrained` lists the entries.

Top-1 figures: the STViT-R ones are the authors' (model card / paper, 224 px,
ImageNet-1k val); Video Swin's are its README's (Kinetics-400 val, 4x3 views);
DeiT and Swin are timm's own measurement of these exact files
(`results/results-imagenet.csv` of huggingface/pytorch-image-models, 224 px,
crop 0.9, bicubic). `sha256` is None where no checksum is published with the
file: the download is then checked against nothing but its size, and the
measured sha256 is recorded in the converted weights' provenance.json.

Extra entries (own mirrors, private repos, tests) come from the JSON file named
by $STVIT_JAX_CATALOGUE, `{model name: {field: value}}` with the fields of
`Weights`; they replace built-in entries of the same name.
"""
from __future__ import annotations

import dataclasses
import json
import os

CATALOGUE_ENV = 'STVIT_JAX_CATALOGUE'
FORMATS = ('safetensors', 'pth', 'npz')


@dataclasses.dataclass(frozen=True)
class Weights:
  model: str            # registry name, e.g. 'stvit_r_swin_small'
  address: str          # 'hf://owner/repo/file' or 'https://...'
  format: str           # one of FORMATS (the converter's reader)
  top1: float | None    # expected top-1 accuracy in %, on `dataset`
  dataset: str          # e.g. 'imagenet2012 validation, 224 px'
  top1_source: str      # who measured `top1`
  sha256: str | None = None  # of the downloaded file, where one is published
  options: tuple = ()   # (key, value) converter options (model constructor overrides)
  license: str = ''

  def __post_init__(self):
    if self.format not in FORMATS:
      raise ValueError(f'catalogue entry {self.model}: format={self.format!r} is not valid; '
                       f'choose one of {FORMATS}')
    if not self.address.startswith(('hf://', 'https://', 'http://')):
      raise ValueError(f'catalogue entry {self.model}: address={self.address!r} must start '
                       'with hf://, https:// or http://')
    if self.sha256 is not None and (len(self.sha256) != 64 or
                                    set(self.sha256) - set('0123456789abcdef')):
      raise ValueError(f'catalogue entry {self.model}: sha256 must be 64 lower-case hex digits')

  @property
  def file(self):
    return self.address.rstrip('/').rsplit('/', 1)[-1]


_TIMM = 'timm results-imagenet.csv (huggingface/pytorch-image-models)'
_IN1K = 'imagenet2012 validation, 224 px'


def _timm(model, hub_name, top1):
  return Weights(model, f'hf://timm/{hub_name}/model.safetensors', 'safetensors', top1, _IN1K,
                 _TIMM, license='apache-2.0')


def _video_swin(model, stem, top1):
  return Weights(model, 'https://github.com/SwinTransformer/storage/releases/download/v1.0.4/'
                 f'{stem}_patch244_window877_kinetics400_1k.pth', 'pth', top1,
                 'kinetics400 validation, 32x224x224, 4x3 views',
                 'Video Swin README (github.com/SwinTransformer/Video-Swin-Transformer)',
                 license='apache-2.0')


BUILTIN = {w.model: w for w in [
    # The STViT authors' releases (github.com/changsn/STViT-R), in the authors' (Microsoft
    # Swin) names; the converter unwraps a 'model' / 'state_dict' entry if the file has one.
    Weights('stvit_r_swin_small', 'hf://csncsn/STViT-R/STViT-R-Swin-S.pth', 'pth', 82.7, _IN1K,
            'STViT paper / authors (CVPR 2023)'),
    Weights('stvit_r_swin_base', 'hf://csncsn/STViT-R/STViT-R-Swin-B.pth', 'pth', 83.2, _IN1K,
            'STViT paper / authors (CVPR 2023)'),
    _timm('deit_tiny', 'deit_tiny_patch16_224.fb_in1k', 72.190),
    _timm('deit_small', 'deit_small_patch16_224.fb_in1k', 79.856),
    _timm('deit_base', 'deit_base_patch16_224.fb_in1k', 81.980),
    _timm('deit_tiny_distilled', 'deit_tiny_distilled_patch16_224.fb_in1k', 74.538),
    _timm('deit_small_distilled', 'deit_small_distilled_patch16_224.fb_in1k', 81.204),
    _timm('deit_base_distilled', 'deit_base_distilled_patch16_224.fb_in1k', 83.384),
    _timm('swin_tiny', 'swin_tiny_patch4_window7_224.ms_in1k', 81.388),
    _timm('swin_small', 'swin_small_patch4_window7_224.ms_in1k', 83.228),
    _timm('swin_base', 'swin_base_patch4_window7_224.ms_in1k', 83.604),
    # Video Swin's own Kinetics-400 releases (ImageNet-1K initialised), in the original
    # code's names; top-1 from its README, 32x224x224 clips, 4 clips x 3 crops.
    _video_swin('video_swin_tiny', 'swin_tiny', 78.8),
    _video_swin('video_swin_small', 'swin_small', 80.6),
    _video_swin('video_swin_base', 'swin_base', 80.6),
]}


def _extra():
  path = os.environ.get(CATALOGUE_ENV)
  if not path:
    return {}
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'${CATALOGUE_ENV}={path}: cannot read it as JSON ({e})') from None
  fields = {f.name for f in dataclasses.fields(Weights)}
  entries = {}
  for model, spec in raw.items():
    unknown = set(spec) - fields
    if unknown:
      raise ValueError(f'${CATALOGUE_ENV}={path}: entry {model!r} has unknown field(s) '
                       f'{sorted(unknown)}; valid: {sorted(fields)}')
    spec = dict(spec, model=model)
    spec['options'] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                   for k, v in dict(spec.get('options', {})).items()))
    spec.setdefault('top1', None)
    spec.setdefault('dataset', '')
    spec.setdefault('top1_source', path)
    entries[model] = Weights(**spec)
  return entries


def entries():
  """{model name: Weights}: the built-in entries, then $STVIT_JAX_CATALOGUE's."""
  return {**BUILTIN, **_extra()}


def get(model):
  """The entry of `model`; a ValueError naming the models that have one otherwise."""
  found = entries()
  if model not in found:
    raise ValueError(f'no pretrained weights are known for {model!r}; models with weights: '
                     f'{", ".join(sorted(found))} (or pass an address: hf://owner/repo/file, '
                     'https://..., or a converted directory)')
  return found[model]


def find(address):
  """The entry whose address is `address`, or None."""
  return next((w for w in entries().values() if w.address == address), None)
