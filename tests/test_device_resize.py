"""The on-device resize of packed windows against PIL's bicubic resize (timm's transforms).

PIL is the reference: `Image.resize((224, 224), BICUBIC)` of the same window. The
JPEGs are `imagenet_like`'s (photo-like spectra, the sizes of ImageNet's), decoded
by TF as the host pipeline decodes them.
"""
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from stvit_jax.data import device_resize, preprocess, windows
from stvit_jax.data.builders import imagenet_like

SIZE = 224


def _pil(window, flip=False):
  out = Image.fromarray(window).resize((SIZE, SIZE), Image.BICUBIC)
  if flip:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(out).astype(np.int32)


@pytest.fixture(scope='module')
def photos():
  """Five decoded imagenet_like photos (TF's decoder) and their JPEG bytes."""
  jpegs = imagenet_like.make_jpegs(5, seed=3)
  return [np.asarray(tf.io.decode_jpeg(j, channels=3)) for j in jpegs], jpegs


def _windows(photos):
  """Windows of the shapes RandomResizedCrop produces: wide, tall, small (upscaled), square."""
  images, _ = photos
  shapes = [(180, 260), (300, 200), (90, 120), (224, 224), (400, 380)]
  out = []
  for image, (h, w) in zip(images, shapes):
    h, w = min(h, image.shape[0]), min(w, image.shape[1])
    out.append(np.ascontiguousarray(image[:h, :w]))
  return out


def _resize(ws, flip=None, devices=1, max_side=512, capacity_factor=4.0):
  packed = windows.pack(ws, devices=devices, size=SIZE, max_side=max_side,
                        capacity_factor=capacity_factor)
  fn = jax.jit(lambda b, o, h, w, f: device_resize.resize_packed(
      b, o, h, w, size=SIZE, max_side=max_side, flip=f))
  flip = np.zeros(len(ws), bool) if flip is None else np.asarray(flip)
  return np.asarray(fn(packed.buffer, packed.offsets, packed.heights, packed.widths,
                       flip)).astype(np.int32), packed


def test_each_window_matches_pil_bicubic(photos):
  ws = _windows(photos)
  out, packed = _resize(ws)
  assert packed.shrunk == 0
  for x, ours in zip(ws, out):
    diff = np.abs(ours - _pil(x))
    assert diff.mean() <= 1.0, (x.shape, diff.mean())
    if x.shape[0] <= x.shape[1]:  # horizontal pass first, as Pillow's Resample.c: equal
      assert diff.max() <= 1 and diff.mean() < 0.01, (x.shape, diff.mean(), diff.max())


def test_flip_is_the_mirrored_resize(photos):
  ws = [_windows(photos)[i] for i in (0, 2)]  # both wider than tall: PIL's order is ours
  out, _ = _resize(ws, flip=[True, False])
  assert np.abs(out[0] - _pil(ws[0], flip=True)).mean() < 0.01
  assert np.abs(out[1] - _pil(ws[1])).mean() < 0.01


def test_rows_split_over_devices_give_the_same_images(photos):
  ws = _windows(photos)[:4]
  one, _ = _resize(ws, devices=1)
  two, packed = _resize(ws, devices=2)
  assert packed.buffer.shape[0] == 2 and packed.offsets[2] == 0  # row 2 starts device 1
  np.testing.assert_array_equal(one, two)


def test_weights_are_pils_coefficients():
  # Downscale 2x: output 100's centre is input 201, the support 4 input pixels each side
  # (taps 197..204), weights symmetric about the centre, summing to 1; a window of 7
  # pixels: no weight past it.
  w = np.asarray(device_resize.pil_weights(jnp.array([448, 7]), SIZE, 512))
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  row = w[0, 100]
  taps = np.nonzero(row)[0]
  assert taps.min() == 197 and taps.max() == 204
  np.testing.assert_allclose(row[197:201], row[204:200:-1], atol=1e-7)
  assert row[200] > row[199] > 0 > row[197]  # the cubic's negative lobe at the ends
  assert np.all(w[1, :, 7:] == 0)


def test_overflowing_device_buffer_shrinks_its_largest_windows(photos):
  ws = _windows(photos)[:4]
  # capacity for 0.8 of a 224x224 image per row: the (300, 200) and (224, 224) windows
  # do not fit beside the others
  out, packed = _resize(ws, capacity_factor=0.8)
  cap = windows.capacity(SIZE, 4, 0.8)
  used = int(np.sum(packed.heights.astype(np.int64) * packed.widths * 3))
  assert packed.shrunk >= 1 and used <= cap == packed.buffer.shape[1]
  assert out.shape == (4, SIZE, SIZE, 3)
  # a shrunk window is still the same picture: close to PIL's resize of the original
  for x, ours in zip(ws, out):
    assert np.abs(ours - _pil(x)).mean() < 3.0


def test_windows_past_the_canvas_are_shrunk_to_fit():
  big = np.random.default_rng(0).integers(0, 256, (600, 300, 3)).astype(np.uint8)
  packed = windows.pack([big], devices=1, size=SIZE, max_side=512, capacity_factor=8.0)
  assert packed.shrunk == 1 and (packed.heights[0], packed.widths[0]) == (512, 256)


def test_host_decode_then_device_resize_matches_pil_on_the_full_window(photos):
  """End to end: TF decodes only the crop window of the JPEG (decode_and_crop_jpeg), the
  device resizes it; PIL decodes the whole JPEG, crops the same window and resizes."""
  _, jpegs = photos
  ws, refs = [], []
  for i, jpeg in enumerate(jpegs[:3]):
    h, w = tf.io.extract_jpeg_shape(jpeg).numpy()[:2]
    top, left, ch, cw = h // 5, w // 7 + i, h // 2 + 3 * i, (2 * w) // 3
    ws.append(np.asarray(tf.io.decode_and_crop_jpeg(jpeg, [top, left, ch, cw], channels=3,
                                                    dct_method=preprocess.JPEG_DCT)))
    full = Image.open(io.BytesIO(jpeg)).convert('RGB')
    refs.append(np.asarray(full.crop((left, top, left + cw, top + ch)).resize(
        (SIZE, SIZE), Image.BICUBIC)).astype(np.int32))
  out, _ = _resize(ws)
  for x, ours, ref in zip(ws, out, refs):
    diff = np.abs(ours - ref)
    assert diff.mean() <= 1.0
    if x.shape[0] <= x.shape[1]:  # PIL's pass order: the decoders agree bitwise too
      assert diff.mean() < 0.01
