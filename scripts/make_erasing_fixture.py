"""Writes tests/fixtures/timm_random_erasing.npz: the boxes timm's RandomErasing draws
(run by hand, not by CI, which installs no torch or timm).

    pip install -e '.[torch]' && pip install timm==1.0.31 --no-deps
    python scripts/make_erasing_fixture.py

`RandomErasing(prob=0.6, mode='pixel', max_count=1, device='cpu')` on 6000 zero images
of 24x40 (torch.manual_seed(0), random.seed(0)). Stored per image: (erased, h, w, top,
left) of the box, and the mean and std of the erased values. tests/test_device_augment.py
compares our on-device erasing with these statistics in every CI run, and with a fresh
timm draw where timm is installed.
"""
import pathlib
import random
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
N, PROB, H, W, SEED = 6000, 0.6, 24, 40, 0


def boxes(erased):
  """Per image (n, H, W, C): (erased?, h, w, top, left) of its one nonzero rectangle."""
  out = []
  for img in erased:
    mask = np.any(img != 0, axis=-1)
    if not mask.any():
      out.append((0, 0, 0, -1, -1))
      continue
    rows, cols = np.where(mask)
    top, left = rows.min(), cols.min()
    h, w = rows.max() - top + 1, cols.max() - left + 1
    if not (mask[top:top + h, left:left + w].all() and mask.sum() == h * w):
      raise AssertionError('an erased region that is not one rectangle')
    out.append((1, h, w, top, left))
  return np.array(out, np.int16)


def timm_draw(n=N, prob=PROB, seed=SEED):
  """(boxes, erased values) of timm's RandomErasing on n zero images."""
  sys.path.insert(0, str(ROOT / 'scripts'))
  import torchvision_stub  # pylint: disable=g-import-not-at-top  timm imports torchvision
  torchvision_stub.install()
  import torch  # pylint: disable=g-import-not-at-top
  from timm.data import random_erasing  # pylint: disable=g-import-not-at-top
  random.seed(seed)
  torch.manual_seed(seed)
  eraser = random_erasing.RandomErasing(prob, mode='pixel', max_count=1, device='cpu')
  x = torch.zeros(n, 3, H, W)
  eraser(x)
  x = x.numpy().transpose(0, 2, 3, 1)
  return boxes(x), x[x != 0]


def main():
  drawn, values = timm_draw()  # installs the torchvision stub that importing timm needs
  import timm  # pylint: disable=g-import-not-at-top
  out = ROOT / 'tests' / 'fixtures' / 'timm_random_erasing.npz'
  np.savez_compressed(out, boxes=drawn, value_mean=values.mean(), value_std=values.std(),
                      prob=PROB, height=H, width=W, timm_version=timm.__version__)
  print(f'{out}: {len(drawn)} images, {int(drawn[:, 0].sum())} erased, timm {timm.__version__}')


if __name__ == '__main__':
  main()
