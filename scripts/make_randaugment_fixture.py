"""Writes tests/fixtures/timm_randaugment_ops.npz: timm's RandAugment ops run by PIL on a few
small images, at fixed magnitudes and signs (run by hand, not by CI, which installs no timm).

    pip install -e '.[torch]' && pip install timm==1.0.31 --no-deps
    python scripts/make_randaugment_fixture.py

For each of 3 synthetic 40x40 textures, each op of augment.OPS (timm's RandAugment set,
increasing variants included), magnitudes 4.5 and 9 and, for the signed ops, both signs:
timm's own `NAME_TO_OP[name](img, *LEVEL_TO_ARG[name](level, hparams))` with DeiT's
hparams (fill = IMAGENET_DEFAULT_MEAN in 0..255, BICUBIC, translate_pct 0.45), the sign
forced by replacing timm's `_randomly_negate`. tests/test_device_randaugment.py checks the
device ops and the TF host ops against these outputs.
"""
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE, LEVELS = 40, (4.5, 9.0)
FILL = (124, 116, 104)  # timm: tuple(min(255, round(255 * m)) for m in IMAGENET_DEFAULT_MEAN)
SIGNED = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel', 'ColorIncreasing',
          'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing')
NAMES = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'PosterizeIncreasing',
         'Solarize', 'SolarizeIncreasing', 'SolarizeAdd', 'Color', 'ColorIncreasing', 'Contrast',
         'ContrastIncreasing', 'Brightness', 'BrightnessIncreasing', 'Sharpness',
         'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


def images(n=3, size=SIZE, seed=0):
  """Textures with edges, gradients and noise in 30..220 (so AutoContrast and Equalize act)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / size
  out = []
  for i in range(n):
    phase = rng.uniform(0, 6, (3, 1, 1))
    base = 125 + 70 * np.sin(6 * x + phase + i) * np.cos(5 * y - phase)
    base = base + 25 * ((x > 0.3 + 0.1 * i) & (y < 0.6))          # a sharp edge
    out.append(np.clip(base + rng.normal(0, 12, (3, size, size)), 30, 220).transpose(1, 2, 0))
  return np.stack(out).astype(np.uint8)


def cases():
  """(name, level, sign) triples, sign +1 only for the unsigned ops."""
  return [(name, level, sign) for name in NAMES for level in LEVELS
          for sign in ((1.0, -1.0) if name in SIGNED else (1.0,))]


def timm_outputs(imgs, table):
  """uint8 (n_images, n_cases, H, W, 3) of timm's ops."""
  sys.path.insert(0, str(ROOT / 'scripts'))
  import torchvision_stub  # pylint: disable=g-import-not-at-top  timm imports torchvision
  torchvision_stub.install()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from timm.data import auto_augment  # pylint: disable=g-import-not-at-top
  hparams = dict(translate_const=250, img_mean=FILL, translate_pct=0.45)
  out = np.zeros((len(imgs), len(table)) + imgs.shape[1:], np.uint8)
  for j, (name, level, sign) in enumerate(table):
    auto_augment._randomly_negate = lambda v, s=sign: s * v  # the level maps look it up
    level_fn = auto_augment.LEVEL_TO_ARG[name]
    args = level_fn(level, hparams) if level_fn is not None else ()
    for i, img in enumerate(imgs):
      pil = auto_augment.NAME_TO_OP[name](Image.fromarray(img), *args, fillcolor=FILL,
                                          resample=Image.BICUBIC)
      out[i, j] = np.asarray(pil.convert('RGB'))
  return out


def main():
  imgs, table = images(), cases()
  out = timm_outputs(imgs, table)
  import timm  # pylint: disable=g-import-not-at-top
  path = ROOT / 'tests' / 'fixtures' / 'timm_randaugment_ops.npz'
  np.savez_compressed(path, images=imgs, outputs=out, names=np.array([c[0] for c in table]),
                      levels=np.array([c[1] for c in table], np.float32),
                      signs=np.array([c[2] for c in table], np.float32), fill=np.array(FILL),
                      timm_version=timm.__version__)
  print(f'{path}: {out.shape[1]} cases x {len(imgs)} images, {path.stat().st_size} bytes, '
        f'timm {timm.__version__}')


if __name__ == '__main__':
  main()
