"""PyTorch checkpoint files as numpy: `{name: array}` from .pth / .pt / .safetensors / .npz.

The reading side of `python -m stvit_jax.tools.convert` (and of `pretrained`): torch is
imported only for .pth / .pt; .safetensors and .npz need no torch. Tensors come
out as numpy arrays (bfloat16 widened to float32), names exactly as saved.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

WRAPPERS = ('model', 'state_dict', 'model_ema')  # dict entries that hold the state_dict
FORMATS = ('.pth', '.pt', '.safetensors', '.npz')


def load_state_dict(path, key=None):
  """{name: np.ndarray} from a .pth / .pt / .safetensors / .npz file, and the
  wrapper key that held it (None when the file is the state_dict itself)."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise ValueError(f'--src {path}: unknown format {ext!r}; use one of {", ".join(FORMATS)}')
  if ext == '.npz':
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}, None
  if ext == '.safetensors':
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise ImportError("reading .safetensors needs the safetensors package: "
                        "pip install 'stvit_jax[torch]' (or pip install safetensors)") from None
    return load_file(path), None
  try:
    import torch
  except ImportError:
    raise ImportError(f"reading {ext} files needs PyTorch: pip install 'stvit_jax[torch]'"
                      ) from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    # torch's own advice (weights_only=False) would run arbitrary pickled code; a
    # released checkpoint never needs it. Name the file and the first line of the cause.
    # torch's text around the reason is its advice; keep the lines that state the reason.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()
             and 'weights_only' not in line and not line.endswith(':')]
    cause = lines[0] if lines else type(e).__name__
    raise ValueError(f'--src {path}: not a readable PyTorch checkpoint ({type(e).__name__}: '
                     f'{cause[:200]}); expected a state_dict saved with torch.save') from None
  if key is None and isinstance(obj, dict):
    key = next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
  if key is not None:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), dict):
      raise ValueError(f'--key {key!r}: {path} has no dict entry {key!r}; its top-level '
                       f'entries are {sorted(obj) if isinstance(obj, dict) else type(obj)}')
    obj = obj[key]
  bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
  if bad:
    raise ValueError(f'{path}: entries {bad[:5]} are not tensors; pick the state_dict with '
                     f'--key (one of {list(WRAPPERS)})')
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in obj.items()}, key


def strip_prefix(state_dict, prefix='module.'):
  """DataParallel / DDP saves prefix every name with 'module.'; drop it."""
  if state_dict and all(k.startswith(prefix) for k in state_dict):
    return {k[len(prefix):]: v for k, v in state_dict.items()}, True
  return state_dict, False


def sha256(path):
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()
