"""A generated ImageNet-like `imagenet2012` TFDS dataset, for timing the input pipeline.

Decode and crop costs depend on pixel counts and on the bytes of entropy-coded
data, so the images follow ImageNet's size statistics rather than its content:

  * ILSVRC-2012 train is 1,281,167 JPEGs in ~138 GB: ~110 KB mean. Images are
    mostly Flickr photos whose longer side was capped at 500 px: about 80 %
    have a 500 px longer side (500x375, 500x333, 375x500, 500x500 lead), the
    rest are smaller or (a few %) much larger; the mean is about 400x350.
  * Quality: Flickr JPEGs at about quality 75..96, 4:2:0 chroma.

Content is 1/f ("pink") noise per image with a random spectral slope and
detail, correlated colour channels and a few hard edges, tuned so the mean
file size lands near ImageNet's. The records are written as real TFDS
`imagenet2012` files (`dataset_info.json` + TFRecord shards), so the pipeline
reads them through the real builder: file reading, proto parsing and all.
"""
import io
import os

import numpy as np

LONG_SIDE_500 = 0.8                   # share with a 500 px longer side
ASPECTS = ((4 / 3, 0.55), (3 / 2, 0.25), (1.0, 0.1), (5 / 4, 0.1))  # long / short, weight
PORTRAIT = 0.25                       # share taller than wide
QUALITIES = ((75, 0.1), (85, 0.2), (90, 0.3), (95, 0.4))


def sample_size(rng):
  """(height, width) following the statistics above."""
  aspect = rng.choice([a for a, _ in ASPECTS], p=[w for _, w in ASPECTS])
  if rng.random() < LONG_SIDE_500:
    long = 500
  elif rng.random() < 0.85:
    long = int(rng.integers(200, 500))
  else:  # the occasional large original
    long = int(rng.integers(501, 1600))
  short = max(32, int(round(long / aspect)))
  return (long, short) if rng.random() < PORTRAIT else (short, long)


def _pink(rng, amplitude, h, w):
  """Gaussian noise with the given amplitude spectrum (rfft2 layout), unit std, float32."""
  shape = amplitude.shape
  re, im = (rng.standard_normal(shape, np.float32) for _ in range(2))
  x = np.fft.irfft2((re + 1j * im) * amplitude, s=(h, w)).astype(np.float32)
  return x / (x.std() + 1e-9)


def sample_image(rng):
  """A uint8 (H, W, 3) photo-like image and its JPEG quality."""
  h, w = sample_size(rng)
  fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
  fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
  f = np.sqrt(fy * fy + fx * fx)
  f[0, 0] = 1.0
  slope = rng.uniform(0.9, 1.5)          # natural images: ~1 (rough) .. 1.5 (smooth)
  amplitude = f ** -slope
  amplitude[0, 0] = 0
  luma = _pink(rng, amplitude, h, w)
  amplitude *= f ** -0.3                 # smoother colour than luminance
  c0, c1 = _pink(rng, amplitude, h, w), _pink(rng, amplitude, h, w)
  image = np.stack([luma + 0.5 * c0, luma - 0.3 * c0 - 0.3 * c1, luma + 0.6 * c1], -1)
  for _ in range(rng.integers(0, 4)):    # a few hard edges: objects on a background
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    image[y0:y0 + rng.integers(h // 8, h // 2), x0:x0 + rng.integers(w // 8, w // 2)] += \
        rng.normal(0, 1.0, 3).astype(np.float32)
  image *= rng.uniform(40, 70)           # contrast
  image += 128
  image += rng.uniform(2, 8) * rng.standard_normal(image.shape, np.float32)  # sensor noise
  quality = int(rng.choice([q for q, _ in QUALITIES], p=[p for _, p in QUALITIES]))
  return np.clip(image, 0, 255).astype(np.uint8), quality


def encode_jpeg(image, quality):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='JPEG', quality=quality)  # 4:2:0 like most photos
  return out.getvalue()


def make_jpegs(count, seed=0):
  """`count` ImageNet-like JPEGs (bytes), deterministic in seed."""
  rng = np.random.default_rng(seed)
  return [encode_jpeg(*sample_image(rng)) for _ in range(count)]


def describe(jpegs):
  """Mean / median KB and mean pixel size of a list of JPEGs, as text."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  sizes = np.array([len(j) for j in jpegs]) / 1000
  shapes = np.array([tf.io.extract_jpeg_shape(j).numpy()[:2] for j in jpegs])
  return (f'{len(jpegs)} JPEGs: mean {sizes.mean():.0f} KB (median {np.median(sizes):.0f}, '
          f'p10 {np.percentile(sizes, 10):.0f}, p90 {np.percentile(sizes, 90):.0f}), '
          f'mean {shapes[:, 1].mean():.0f}x{shapes[:, 0].mean():.0f} px (WxH), '
          f'{np.mean(shapes.max(1) == 500):.0%} with a 500 px longer side')


def write_imagenet2012(data_dir, jpegs, *, num_train, num_eval):
  """A prepared `imagenet2012` in data_dir: `train` cycles through jpegs[:num_train]
  repeatedly, `validation` through the same list from the other end. Returns data_dir."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
      dataset_name='imagenet2012', split='train', filetype_suffix='tfrecord')
  splits = {'train': num_train, 'validation': num_eval}
  os.makedirs(builder.data_dir, exist_ok=True)
  features = builder.info.features
  for name, n in splits.items():
    path = template.replace(split=name).sharded_filepath(shard_index=0, num_shards=1)
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
      for i in range(n):
        jpeg = jpegs[i % len(jpegs)] if name == 'train' else jpegs[-1 - i % len(jpegs)]
        writer.write(features.serialize_example(
            {'image': io.BytesIO(jpeg), 'label': i % 1000, 'file_name': f'{name}_{i}.JPEG'}))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0,
                          filename_template=template.replace(split=name))
      for name, n in splits.items()]))
  builder.info.write_to_directory(builder.data_dir)
  return data_dir
