"""Writes the PyTorch parity fixtures of tests/test_convert.py (run by hand, not by CI).

Exact command and versions of the committed fixtures (Python 3.11.7, numpy 2.4.6):

    pip install torch==2.13.0                  # the CPU wheel
    pip install timm==1.0.31 --no-deps         # timm's own deps: torch, pyyaml, safetensors
    python scripts/make_parity_fixtures.py     # -> tests/fixtures/

timm imports torchvision at import time and there is no CPU torchvision wheel
here, so when torchvision is missing this script installs an import stub: every
`torchvision.*` module imports, and its names are placeholders that raise if
called. The model classes used below never call torchvision.

Every model is built by timm's own classes at reduced width and depth, with
random weights (not timm's init, which leaves biases at 0 and norms at 1, so
that every tensor's mapping shows in the logits). Output:

  tests/fixtures/<case>.npz          state_dict, names exactly as the source writes them
  tests/fixtures/<case>.io.npz       'input' (B, 3, H, W) float16 -> fed as float32, and
                                     'logits' (B, classes) float32 from PyTorch in eval mode
  tests/fixtures/parity.json         per case: stvit_jax model, options, files, how it was made
  tests/fixtures/names/<model>.txt   full-size models: name, shape, dtype per tensor (no weights)

Swin in Microsoft's layout (`layers.N.downsample` ends stage N, `head`,
persistent relative_position_index / attn_mask buffers) is produced from the
timm model by the inverse of timm's own `swin_transformer.checkpoint_filter_fn`
(which is how timm loads Microsoft's releases); the script checks that timm's
filter maps it back to the original state_dict, loads strictly and gives the
same logits.
"""
import json
import os
import re
import sys

import numpy as np

import torchvision_stub  # scripts/: sys.path[0] when run as a script

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'fixtures')
STUBBED = torchvision_stub.install()
import timm  # noqa: E402
import torch  # noqa: E402
from timm.models import swin_transformer  # noqa: E402
from timm.models import vision_transformer  # noqa: E402

DEIT = dict(embed_dim=32, depth=2, num_heads=2, img_size=64)
SWIN = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
CLASSES = 10


def randomize(model, seed):
  """Random values for every float tensor, scaled to keep activations O(1)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if not t.is_floating_point() or name.endswith('attn_mask'):
        continue
      n = torch.randn(t.shape, generator=g)
      leaf = name.rsplit('.', 1)[-1]
      if leaf == 'weight' and t.ndim >= 2:
        value = n / np.sqrt(np.prod(t.shape[1:]))
      elif leaf == 'weight':
        value = 1 + 0.2 * n
      elif leaf in ('bias', 'running_mean'):
        value = 0.2 * n
      elif leaf == 'running_var':
        value = 0.5 + torch.rand(t.shape, generator=g)
      else:  # tokens, position embeddings, relative position bias tables
        value = 0.5 * n
      t.copy_(value)
  return model.eval()


def numpy_dict(state_dict):
  return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


def to_microsoft(model, state_dict):
  """timm >= 0.9 Swin state_dict -> Microsoft's names, with its persistent buffers."""
  out = {}
  for k, v in state_dict.items():
    k = re.sub(r'^layers\.(\d+)\.downsample\.',
               lambda m: f'layers.{int(m.group(1)) - 1}.downsample.', k)
    out[re.sub(r'^head\.fc\.', 'head.', k)] = v
  for k, v in model.named_buffers():
    if k.endswith(('relative_position_index', 'attn_mask')):
      out[k] = v
  return out


def image(seed, size, batch=2):
  g = torch.Generator().manual_seed(seed)
  return torch.randn((batch, 3, size, size), generator=g).half()


def logits(model, x16):
  with torch.no_grad():
    return model(x16.float()).numpy()


def save(name, arrays):
  path = os.path.join(OUT, name)
  np.savez_compressed(path, **arrays)
  return os.path.basename(path)


def main():
  os.makedirs(os.path.join(OUT, 'names'), exist_ok=True)
  cases = {}

  def case(name, model, options, state, io, timm_name, **info):
    cases[name] = dict(model=model, options=options, state=state, io=io, timm_model=timm_name,
                       **info)

  # DeiT and distilled DeiT at 64x64 (4x4 patch grid), and position-embedding resizes
  # done by timm's own checkpoint filter (bicubic, antialias) for the reference.
  for i, (jax_name, timm_name, resize) in enumerate((
      ('deit_tiny', 'deit_tiny_patch16_224', 96),
      ('deit_tiny_distilled', 'deit_tiny_distilled_patch16_224', 48))):
    model = randomize(timm.create_model(timm_name, num_classes=CLASSES, **DEIT), seed=10 + i)
    state = save(f'{jax_name}.npz', numpy_dict(model.state_dict()))
    x = image(20 + i, DEIT['img_size'])
    io = save(f'{jax_name}.io.npz', dict(input=x.numpy(), logits=logits(model, x)))
    options = {k: v for k, v in DEIT.items()}
    case(jax_name, jax_name, options, state, io, timm_name)

    resized = timm.create_model(timm_name, num_classes=CLASSES, **{**DEIT, 'img_size': resize})
    filtered = vision_transformer.checkpoint_filter_fn(model.state_dict(), resized)
    resized.load_state_dict(filtered, strict=True)
    resized.eval()
    x = image(30 + i, resize)
    io = save(f'{jax_name}_{resize}.io.npz', dict(input=x.numpy(), logits=logits(resized, x)))
    case(f'{jax_name}_resized_{resize}', jax_name, {**options, 'img_size': resize}, state, io,
         timm_name, resize_pos_embed='timm vision_transformer.checkpoint_filter_fn')

  # Swin at 224 (window 7, real grids 56/28/14/7) at width 8: timm's and Microsoft's layouts.
  model = randomize(timm.create_model('swin_tiny_patch4_window7_224', num_classes=CLASSES,
                                      **SWIN), seed=40)
  x = image(41, 224)
  io = save('swin_tiny.io.npz', dict(input=x.numpy(), logits=logits(model, x)))
  options = {k: list(v) if isinstance(v, tuple) else v for k, v in SWIN.items()}
  state = save('swin_tiny.timm.npz', numpy_dict(model.state_dict()))
  case('swin_tiny_timm_layout', 'swin_tiny', options, state, io, 'swin_tiny_patch4_window7_224',
       layout='timm')
  microsoft = to_microsoft(model, model.state_dict())
  check = timm.create_model('swin_tiny_patch4_window7_224', num_classes=CLASSES, **SWIN).eval()
  back = swin_transformer.checkpoint_filter_fn(microsoft, check)
  assert sorted(back) == sorted(model.state_dict()), 'Microsoft layout does not map back'
  check.load_state_dict(back, strict=True)
  assert np.array_equal(logits(check, x), np.load(os.path.join(OUT, io))['logits'])
  state = save('swin_tiny.microsoft.npz', numpy_dict(microsoft))
  case('swin_tiny_microsoft_layout', 'swin_tiny', options, state, io,
       'swin_tiny_patch4_window7_224', layout='microsoft',
       made_by='inverse of timm swin_transformer.checkpoint_filter_fn, checked by round trip')

  # Full-size name / shape lists (meta tensors: no memory, no weights).
  full = [(f'deit_{s}', f'deit_{s}_patch16_224', None) for s in ('tiny', 'small', 'base')]
  full += [(f'deit_{s}_distilled', f'deit_{s}_distilled_patch16_224', None)
           for s in ('tiny', 'small', 'base')]
  full += [(f'swin_{s}', f'swin_{s}_patch4_window7_224', layout)
           for s in ('tiny', 'small', 'base') for layout in ('timm', 'microsoft')]
  lists = {}
  for jax_name, timm_name, layout in full:
    with torch.device('meta'):
      model = timm.create_model(timm_name)
    sd = model.state_dict()
    if layout == 'microsoft':
      sd = to_microsoft(model, sd)
    file = f'{jax_name}.{layout}.txt' if layout else f'{jax_name}.txt'
    count = sum(int(np.prod(v.shape)) for k, v in sd.items() if v.is_floating_point()
                and not k.endswith('attn_mask'))
    with open(os.path.join(OUT, 'names', file), 'w') as f:
      f.write(f'# timm {timm.__version__} {timm_name}'
              + (f', {layout} layout' if layout else '') + f', {len(sd)} entries, '
              f'{count} float values\n')
      for k, v in sd.items():
        f.write(f'{k}\t{tuple(v.shape)}\t{str(v.dtype).replace("torch.", "")}\n')
    lists[file] = dict(model=jax_name, timm_model=timm_name, layout=layout)

  manifest = dict(
      made_by='scripts/make_parity_fixtures.py',
      versions=dict(torch=torch.__version__, timm=timm.__version__, numpy=np.__version__,
                    python=sys.version.split()[0], torchvision_stubbed=STUBBED),
      tolerance='max |logit diff| <= 1e-4 * max |logit|, float32',
      cases=cases, names=lists)
  with open(os.path.join(OUT, 'parity.json'), 'w') as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write('\n')
  for file in sorted(os.listdir(OUT)):
    if os.path.isfile(os.path.join(OUT, file)):
      print(f'{os.path.getsize(os.path.join(OUT, file)):10d}  tests/fixtures/{file}')


if __name__ == '__main__':
  main()
