"""`python -m stvit_jax.tools.predict`: top classes of images made here, with pretrained
weights served locally (a tiny DeiT with ImageNet's 1000 classes, random values, in
timm's names) as the catalogue entry of deit_tiny."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import stvit_jax
from stvit_jax import models
from stvit_jax.tools import predict
from stvit_jax.weights import catalogue
from weights_server import Server, source_state_dict

TINY = {'embed_dim': 32, 'depth': 2, 'num_heads': 2, 'img_size': 64}


@pytest.fixture(scope='module')
def server():
  from safetensors.numpy import save
  with Server() as s:
    s.files['deit_tiny_1k.safetensors'] = save(source_state_dict('deit_tiny', **TINY))
    yield s


@pytest.fixture
def env(server, tmp_path, monkeypatch):
  entry = {'address': server.file_url('deit_tiny_1k.safetensors'), 'format': 'safetensors',
           'options': TINY}
  (tmp_path / 'catalogue.json').write_text(json.dumps({'deit_tiny': entry}))
  monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(tmp_path / 'catalogue.json'))
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  server.requests.clear()


# ImageNet's mean and std (timm / torchvision), as published.
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture
def photos(tmp_path):
  """A folder with a PNG and a JPEG, and a WebP file beside it. Their shorter side is 73 =
  floor(64 / crop_pct 0.875): at image_size 64 the eval transform keeps them at scale 1,
  so its output is known exactly (`expected_input`)."""
  folder = tmp_path / 'photos'
  folder.mkdir()
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:100, 0:73]
  gradient = np.stack([xx * 3, yy * 2, (xx + yy)], -1).astype(np.uint8)
  Image.fromarray(gradient).save(folder / 'gradient.png')
  # 4:4:4: no chroma upsampling, so decoding only the crop window gives the same pixels
  Image.fromarray(rng.integers(0, 256, (73, 100, 3), dtype=np.uint8)).save(
      folder / 'noise.jpg', subsampling=0)
  (folder / 'notes.txt').write_text('not an image')
  Image.fromarray(gradient[::-1]).save(tmp_path / 'flipped.webp')
  return folder, tmp_path / 'flipped.webp'


def expected_input(path):
  """The model input for a photo above, by hand: the centre 64 x 64 ((h - 64) // 2 from the
  top, (w - 64) // 2 from the left), normalised with the literal constants, in float64.
  Pixels: Pillow's, as timm reads them (the JPEG too: data/preprocess.py decodes with
  libjpeg's accurate IDCT, which is Pillow's)."""
  pixels = np.asarray(Image.open(path).convert('RGB'))
  h, w, _ = pixels.shape
  assert min(h, w) == 73
  top, left = (h - 64) // 2, (w - 64) // 2
  return ((pixels[top:top + 64, left:left + 64] / 255.0 - MEAN) / STD).astype(np.float32)


def test_preprocess_by_hand(photos, tmp_path):
  folder, webp = photos
  for path in (folder / 'gradient.png', folder / 'noise.jpg', webp):
    np.testing.assert_allclose(predict.preprocess(str(path), 64), expected_input(path),
                               atol=1e-6, err_msg=str(path))
  # Resized (shorter side 90 -> 73): a flat colour stays that colour.
  Image.fromarray(np.full((120, 90, 3), (10, 128, 250), np.uint8)).save(tmp_path / 'flat.png')
  got = predict.preprocess(str(tmp_path / 'flat.png'), 64)
  assert got.shape == (64, 64, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, np.broadcast_to((np.array([10, 128, 250]) / 255 - MEAN) / STD,
                                                  (64, 64, 3)), atol=1e-6)


@pytest.mark.slow  # compiles the model's forward twice (jit and eager)
def test_predict_prints_top_classes_with_imagenet_names(env, photos, capsys):
  folder, webp = photos
  assert predict.main(['--model', 'deit_tiny', '--image', str(folder), str(webp),
                       '--top', '3']) == 0
  out = capsys.readouterr().out
  print(out)
  blocks = re.findall(r'^(\S+)\n((?:  +\d+\.\d\d%  n\d{8}.*\n){3})', out, re.M)
  assert [os.path.basename(b[0]) for b in blocks] == ['gradient.png', 'noise.jpg',
                                                      'flipped.webp']
  # The same numbers from the model on the input worked out by hand.
  model = stvit_jax.create('deit_tiny', pretrained=True)
  names = predict.class_names(1000)
  assert names[0].startswith('n01440764') and len(set(names)) == 1000
  for path, lines in blocks:
    logits = np.asarray(model(expected_input(path)[None], train=False)[0][0],
                        np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    want = [f'{100 * probs[i]:6.2f}%  {names[i]}' for i in np.argsort(-probs)[:3]]
    assert [l.strip() for l in lines.splitlines()] == [w.strip() for w in want]


def test_bad_inputs_are_one_message_exit_2_before_any_download(env, server, photos, tmp_path,
                                                               capsys):
  folder, _ = photos
  cases = [
      (['--image', str(tmp_path / 'missing.jpg')], 'missing.jpg: no such file or folder'),
      (['--image', str(tmp_path / 'cache')], 'holds no images'),
      (['--image', str(folder), '--init_from', 'nowhere'], "--init_from 'nowhere': not"),
  ]
  (tmp_path / 'cache').mkdir()
  for args, message in cases:
    assert predict.main(['--model', 'deit_tiny'] + args) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err, err
  assert server.requests == []
  (tmp_path / 'fake.jpg').write_bytes(b'\xff\xd8\xff not really a jpeg')
  assert predict.main(['--model', 'deit_tiny', '--image', str(tmp_path / 'fake.jpg')]) == 2
  assert 'fake.jpg: cannot decode it' in capsys.readouterr().err
  assert predict.main(['--model', 'stvit_deit_tiny', '--image', str(folder)]) == 2
  assert 'no pretrained weights are known' in capsys.readouterr().err


@pytest.mark.slow  # compiles a Video Swin forward
def test_predict_a_clip_with_a_video_model(tmp_path, capsys):
  """A tiny Video Swin (random weights saved as converted weights) on an mp4 made here:
  the softmax of 2 clips x 1 crop views, averaged, named by a --classes file."""
  from flax import nnx
  from stvit_jax.weights import store
  from stvit_jax.data.builders import video_convert
  options = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), img_size=32,
                 num_frames=4, num_classes=5)
  model = nnx.eval_shape(lambda: models.create('video_swin_tiny', **options))
  rng = np.random.default_rng(0)
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    var.set_value((0.1 * rng.standard_normal(var.get_value().shape)).astype(np.float32))
  store.save_weights(tmp_path / 'w', model, {'model': 'video_swin_tiny', 'num_classes': 5,
                                                'options': options})
  frames = rng.integers(0, 256, (12, 36, 48, 3), dtype=np.uint8)
  video_convert.write_mp4(tmp_path / 'clip.mp4', frames, 8)
  (tmp_path / 'names.txt').write_text('\n'.join(f'action {i}' for i in range(5)) + '\n')
  assert predict.main(['--model', 'video_swin_tiny', '--image', str(tmp_path / 'clip.mp4'),
                       '--init_from', str(tmp_path / 'w'), '--classes',
                       str(tmp_path / 'names.txt'), '--clips', '2', '--crops', '1',
                       '--top', '5']) == 0
  out = capsys.readouterr().out
  lines = out.splitlines()
  assert lines[0].endswith('clip.mp4') and len(lines) == 6
  shown = [float(re.match(r'\s+(\d+\.\d\d)%  action \d$', l)[1]) for l in lines[1:]]
  assert shown == sorted(shown, reverse=True) and abs(sum(shown) - 100) < 0.05
  loaded = stvit_jax.create('video_swin_tiny', pretrained=str(tmp_path / 'w'))
  views = predict.preprocess_clip(str(tmp_path / 'clip.mp4'), loaded, 2, 1)
  assert views.shape == (2, 4, 32, 32, 3)
  logits = np.asarray(loaded(views, train=False)[0], np.float64)
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs = (probs / probs.sum(1, keepdims=True)).mean(0)
  assert [f'{100 * p:.2f}' for p in sorted(probs, reverse=True)] == [f'{p:.2f}' for p in shown]
  assert predict.main(['--model', 'video_swin_tiny', '--image', str(tmp_path / 'names.txt'),
                       '--init_from', str(tmp_path / 'w')]) == 2
  assert 'cannot decode it as a video' in capsys.readouterr().err
