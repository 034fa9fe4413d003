"""STGM pictures: maps are distributions over the patches, every patch is
assigned, Swin windows land where the key windows are, and the CLI writes a
PNG from a photo that ships with scikit-learn, for untrained and loaded models."""
import os

import numpy as np
import pytest
from PIL import Image
from sklearn import datasets

from stvit_jax.tools import visualize

PHOTO = os.path.join(os.path.dirname(datasets.__file__), 'images', 'china.jpg')

TINY = {  # small widths, every structural feature of the family (as in test_models.py)
    'stvit_deit_small': dict(embed_dim=32, num_heads=2, depth=6, num_base_layers=2, img_size=96),
    'stvit_r_swin_small': dict(embed_dim=16, depths=(2, 2, 6, 2), num_heads=(1, 2, 2, 4)),
    'stvit_swin_small': dict(embed_dim=16, depths=(2, 2, 5, 2), num_heads=(1, 2, 2, 4)),
}


@pytest.fixture(scope='module')
def tiny():
  return {name: visualize.build(name, **kw) for name, kw in TINY.items()}


def maps_of(model, layer, unit=0):
  image = visualize.load_image(PHOTO, model.img_size)
  return visualize.semantic_maps(model, visualize.normalise(image)[None], layer=layer, unit=unit)


def check_normalised_and_covering(maps):
  assert maps.dtype == np.float32 and np.all(maps >= 0)
  np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, rtol=1e-5)  # each token: a distribution
  assert np.all(maps.sum(axis=1) > 0)  # some token attends to every patch
  assignment = visualize.hard_assignment(maps)
  assert assignment.shape == (maps.shape[0],) + maps.shape[2:]  # one token for every patch
  assert assignment.min() >= 0 and assignment.max() < maps.shape[1]
  np.testing.assert_array_equal(  # the assigned token attends to the patch the most
      np.take_along_axis(maps, assignment[:, None], 1)[:, 0], maps.max(axis=1))


@pytest.mark.parametrize('layer', [1, 2])
def test_deit_maps_cover_the_image_tokens(tiny, layer):
  model = tiny['stvit_deit_small']
  maps, patch = maps_of(model, layer)
  assert maps.shape == (1, 16, 6, 6) and patch == 16
  check_normalised_and_covering(maps)


@pytest.mark.parametrize('name,units', [('stvit_r_swin_small', 1), ('stvit_swin_small', 1)])
def test_swin_maps(tiny, name, units):
  model = tiny[name]
  for layer in (1, 2):
    maps, patch = maps_of(model, layer)
    assert maps.shape == (1, 36, 14, 14) and patch == 16
    check_normalised_and_covering(maps)
  # Layer 1 is local: token (r, c) of the 6x6 semantic grid belongs to 7x7 window
  # (r // 3, c // 3) and sees only that window's 10x10 key patch (rows and cols 4i .. 4i+9).
  maps, _ = maps_of(model, 1)
  for r in range(6):
    for c in range(6):
      i, j = r // 3, c // 3
      outside = np.ones((14, 14), bool)
      outside[4 * i:4 * i + 10, 4 * j:4 * j + 10] = False
      token = maps[0, r * 6 + c]
      assert token[outside].sum() == 0 and token[~outside].min() > 0
  with pytest.raises(ValueError, match='units 0..0'):
    maps_of(model, 1, unit=units)


def test_errors_name_the_valid_choices(tiny):
  with pytest.raises(ValueError, match='STGM layers 1..2'):
    maps_of(tiny['stvit_deit_small'], 3)
  with pytest.raises(ValueError, match='no STGM to draw'):
    visualize.build('deit_small')


def test_load_image_any_mode_and_size(tmp_path):
  path = tmp_path / 'odd.png'
  Image.fromarray((np.arange(50 * 30) % 256).astype(np.uint8).reshape(30, 50)).save(path)  # gray
  image = visualize.load_image(path, 64)
  assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def cli_args(name, out, *extra):
  sets = []
  for key, value in TINY[name].items():
    if key != 'img_size' and not isinstance(value, tuple):
      sets += ['--set', f'{key}={value}']
  return ['--model', name, '--image', PHOTO, '--out', str(out), *sets, *extra]


def test_cli_writes_a_png_for_an_untrained_model(tmp_path):
  out = tmp_path / 'deit.png'
  # img_size is an option like any other: 96 -> a 6 x 6 patch grid.
  assert visualize.main(cli_args('stvit_deit_small', out, '--set', 'img_size=96',
                                 '--panel', '48')) == 0
  with Image.open(out) as img:
    assert img.format == 'PNG' and img.mode == 'RGB'
    # 16 token panels + input + assignment = 18 panels of 48 px.
    assert img.width > 5 * 48 and img.height > 3 * 48


def test_cli_loads_weights_from_init_from(tmp_path):
  from stvit_jax.weights import store
  source = visualize.build('stvit_deit_small', seed=7, num_classes=3, **TINY['stvit_deit_small'])
  store.save_weights(tmp_path / 'w', source, {'model': 'stvit_deit_small'})
  # The head's class count differs (3 vs 1000): it plays no part in the maps.
  loaded = visualize.build('stvit_deit_small', init_from=tmp_path / 'w', seed=0,
                           **TINY['stvit_deit_small'])
  np.testing.assert_allclose(maps_of(loaded, 1)[0], maps_of(source, 1)[0], rtol=1e-5, atol=1e-7)
  out, untrained = tmp_path / 'loaded.png', tmp_path / 'untrained.png'
  assert visualize.main(cli_args('stvit_deit_small', out, '--set', 'img_size=96',
                                 '--init_from', str(tmp_path / 'w'))) == 0
  assert visualize.main(cli_args('stvit_deit_small', untrained, '--set', 'img_size=96')) == 0
  sheet, other = (np.asarray(Image.open(p).convert('RGB')).astype(np.float64)
                  for p in (out, untrained))
  # 18 panels of 96 px (the image size: drawn unresized) in ceil(sqrt(18 * 1.6)) = 6
  # columns, 3 rows: 6 * (96 + 4) + 4 wide, title 22 + 3 * (96 + label 14 + 4) + 4 high.
  assert sheet.shape == (368, 604, 3)

  def panel(a, k):
    y, x = 40 + (k // 6) * 114, 4 + (k % 6) * 100
    return a[y:y + 96, x:x + 96]

  # The input: the photo's centre square (427 px * 96 / floor(96 / 0.875)), by Pillow.
  with Image.open(PHOTO) as photo:
    side, (w, h) = 427 * 96 / 109, photo.size
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    want = np.asarray(photo.resize((96, 96), Image.BICUBIC, box=box), np.float64)
  assert np.corrcoef(panel(sheet, 0).ravel(), want.ravel())[0, 1] > 0.98
  np.testing.assert_array_equal(panel(sheet, 0), panel(other, 0))
  # The assignment: 0.45 x the image + 0.55 x each 16 px patch's token colour, by hand,
  # for the loaded weights' tokens; the token numbers drawn on it cover the rest.
  image = panel(sheet, 0)
  tokens = np.argmax(maps_of(loaded, None)[0][0], axis=0)  # (6, 6): the strongest token
  colour = np.kron(visualize.palette(16)[tokens], np.ones((16, 16, 1)))
  same = (panel(sheet, 1) == np.floor(0.45 * image + 0.55 * colour)).all(-1)
  assert 0.7 < same.mean() < 1, same.mean()
  # Token maps: not blank, and the loaded weights draw other maps than an untrained model.
  maps = np.concatenate([panel(sheet, k) for k in range(2, 18)])
  assert maps.std() > 10
  assert np.abs(maps - np.concatenate([panel(other, k) for k in range(2, 18)])).mean() > 10
