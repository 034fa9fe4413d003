"""Video Swin parity: the original PyTorch code vs stvit_jax, on random weights.

The original network code is not part of this repository; point the script at
a copy of SwinTransformer/Video-Swin-Transformer (a checkout, or a bare git
snapshot, read with `git show`):

    python scripts/video_swin_parity.py --repo PATH [--models video_swin_tiny,video_swin_small]
        [--clips 32x224x224,16x160x160]            # full-size comparison, prints a table
    python scripts/video_swin_parity.py --repo PATH --fixtures   # -> tests/fixtures/video_swin_*

mmcv / mmaction / timm imports of the original file are stubbed (the backbone
needs none of them at inference). Every tensor is randomised (bias tables,
biases, norm scales away from their init), the state_dict is written in the
original release layout (`backbone.*`, `cls_head.fc_cls.*`), converted by
`stvit_jax.weights.convert`, and the logits are compared: max |diff| / max |logit|.
"""
import argparse
import os
import subprocess
import sys
import time
import types

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))
SOURCE = 'mmaction/models/backbones/swin_transformer.py'
FIXTURES = os.path.join(HERE, '..', 'tests', 'fixtures')
VARIANTS = {'video_swin_tiny': (96, (2, 2, 6, 2), (3, 6, 12, 24)),
            'video_swin_small': (96, (2, 2, 18, 2), (3, 6, 12, 24)),
            'video_swin_base': (128, (2, 2, 18, 2), (4, 8, 16, 32))}
# Tiny-width fixture: every structural feature (padding on every axis, clamped
# windows, 27-region masks, the temporal-only shift of a 2x2 stage 4).
FIXTURE = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))


def read_source(repo):
  path = os.path.join(repo, SOURCE)
  if os.path.isfile(path):
    with open(path) as f:
      return f.read()
  return subprocess.run(['git', f'--git-dir={repo}', 'show', f'HEAD:{SOURCE}'], check=True,
                        capture_output=True, text=True).stdout


def load_original(repo):
  """Executes the original backbone module with its framework imports stubbed."""
  def module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    m.__path__ = []
    sys.modules[name] = m
    return m

  class Registry:
    def register_module(self, *a, **k):
      return lambda cls: cls

  class DropPath(nn.Module):  # only built with drop_path > 0; parity runs in eval
    def __init__(self, p=0.0):
      super().__init__()

    def forward(self, x):
      return x

  module('timm')
  module('timm.models')
  module('timm.models.layers', DropPath=DropPath, trunc_normal_=nn.init.trunc_normal_)
  module('mmcv')
  module('mmcv.runner', load_checkpoint=None)
  module('mmaction', utils=module('mmaction.utils', get_root_logger=None))
  module('mmaction.models')
  module('mmaction.models.builder', BACKBONES=Registry())
  module('mmaction.models.backbones')
  code = compile(read_source(repo), SOURCE, 'exec')
  mod = module('mmaction.models.backbones.swin_transformer')
  mod.__package__ = 'mmaction.models.backbones'
  exec(code, mod.__dict__)  # pylint: disable=exec-used
  return mod


class Recognizer(nn.Module):
  """Backbone + I3D head (avg pool over T, H, W -> fc_cls), eval mode."""

  def __init__(self, original, embed_dim, depths, heads, classes):
    super().__init__()
    self.backbone = original.SwinTransformer3D(
        patch_size=(2, 4, 4), embed_dim=embed_dim, depths=list(depths), num_heads=list(heads),
        window_size=(8, 7, 7), patch_norm=True, drop_path_rate=0.0)
    self.cls_head = nn.Module()
    self.cls_head.fc_cls = nn.Linear(embed_dim * 8, classes)

  def forward(self, x):  # x (B, 3, T, H, W)
    return self.cls_head.fc_cls(self.backbone(x).mean(dim=(2, 3, 4)))


def randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if name.endswith('relative_position_index'):
        continue
      n = torch.randn(t.shape, generator=g)
      leaf = name.rsplit('.', 1)[-1]
      if leaf == 'weight' and t.ndim >= 2:
        value = n / np.sqrt(np.prod(t.shape[1:]))
      elif leaf == 'weight':
        value = 1 + 0.2 * n
      elif leaf == 'bias':
        value = 0.2 * n
      else:  # relative position bias tables
        value = 0.5 * n
      t.copy_(value)
  return model.eval()


def state_dict_of(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def compare(original, name, clip, *, seed, options=None, classes=400):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from stvit_jax.weights import convert
  dim, depths, heads = (options['embed_dim'], options['depths'], options['num_heads']) \
      if options else VARIANTS[name]
  torch_model = randomize(Recognizer(original, dim, depths, heads, classes), seed)
  sd = state_dict_of(torch_model)
  t, h, w = clip
  # float16-representable input: the fixtures store it as float16.
  x = torch.randn((1, 3, t, h, w), generator=torch.Generator().manual_seed(seed + 1)).half().float()
  with torch.no_grad():
    want = torch_model(x).numpy()
  model, conversion, layout = convert.convert(name, sd, **(options or {}))
  assert layout == 'original' and not conversion.fresh, (layout, conversion.fresh)
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v, train=False)[0])
  got = np.asarray(run(state, jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1))))
  err = float(np.abs(got - want).max() / np.abs(want).max())
  return err, sd, x.numpy(), want


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--repo', required=True,
                      help='Video-Swin-Transformer checkout or bare git directory')
  parser.add_argument('--models', default='video_swin_tiny,video_swin_small')
  parser.add_argument('--clips', default='32x224x224,16x160x160', help='TxHxW, comma separated')
  parser.add_argument('--fixtures', action='store_true',
                      help='write the tiny-width CI fixtures instead')
  args = parser.parse_args(argv)
  original = load_original(args.repo)
  torch.set_num_threads(max(1, os.cpu_count() // 2))
  if args.fixtures:
    # One set of weights, two clips: 18x56x72 pads every axis (D 9 -> 16 with the
    # temporal shift, 14x18 -> 14x21, odd grids before merging) and clamps the
    # spatial window in stages 3-4; 4x40x40 clamps time (no temporal shift).
    for tag, clip in (('', (18, 56, 72)), ('_small_clip', (4, 40, 40))):
      err, sd, x, logits = compare(original, 'video_swin_tiny', clip, seed=60,
                                   options={**FIXTURE, 'num_classes': 10}, classes=10)
      if not tag:
        np.savez_compressed(os.path.join(FIXTURES, 'video_swin_tiny.npz'), **sd)
      np.savez_compressed(os.path.join(FIXTURES, f'video_swin_tiny{tag}.io.npz'),
                          input=x.astype(np.float16), logits=logits)
      print(f'video_swin_tiny{tag} {clip}: max rel err {err:.2e}')
    return
  print(f'{"model":<18} {"clip":>12} {"max rel err":>12} {"time":>6}')
  for name in args.models.split(','):
    for i, clip in enumerate(args.clips.split(',')):
      t, h, w = map(int, clip.split('x'))
      start = time.time()
      err, *_ = compare(original, name, (t, h, w), seed=100 + i)
      print(f'{name:<18} {clip:>12} {err:>12.2e} {time.time() - start:>5.0f}s', flush=True)


if __name__ == '__main__':
  main()
