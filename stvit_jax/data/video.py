"""Video clips from TFDS video datasets: sampling, frame-consistent augmentation, views.

Records are read with their frames undecoded (each frame is its own JPEG in a
`tfds.features.Video`); a clip chooses its frame indices first and decodes only
those frames (train: only the crop window of each).

train: `num_frames` frames `frame_stride` apart from a random offset, looping a
       video shorter than the span (docs/video.md section 1); one
       RandomResizedCrop box and one flip decision for every frame of the clip;
       resize to image_size; normalise. Seeded per example by the image pipeline's
       rule, so a resumed run sees exactly the clips it would have seen.
eval:  `eval_clips` clips evenly spaced over the video (mmaction's test-mode
       SampleFrames) x `eval_crops` crops along the long side of frames resized to
       short side image_size: views = clips x crops per video, averaged in
       train/evaluate.py; every video counted once via padding masks.
Sharding, shuffling and resume are data/pipeline.py's, unchanged.
"""
import math

import tensorflow as tf
import tensorflow_datasets as tfds

from stvit_jax.data import datasets, pipeline, preprocess, read_errors


def check_config(cfg):
  def bad(field, valid):
    return ValueError(f'data.{field}={cfg[field]!r} is invalid: expected {valid}')

  for field in ('image_size', 'num_frames', 'frame_stride', 'eval_clips', 'eval_crops',
                'shuffle_buffer'):
    if not isinstance(cfg[field], int) or cfg[field] < 1:
      raise bad(field, 'a positive int')
  if not 0 <= cfg.hflip <= 1:
    raise bad('hflip', 'a probability in [0, 1]')
  lo, hi = cfg.crop_scale
  if not 0 < lo <= hi <= 1:
    raise bad('crop_scale', '(min, max) with 0 < min <= max <= 1')
  lo, hi = cfg.crop_ratio
  if not 0 < lo <= hi:
    raise bad('crop_ratio', '(min, max) aspect ratios with 0 < min <= max')
  if cfg.interpolation not in preprocess.INTERPOLATIONS:
    raise bad('interpolation', f'one of {preprocess.INTERPOLATIONS}')
  for field in ('mean', 'std'):
    if len(cfg[field]) != 3:
      raise bad(field, 'three per-channel values in [0, 1] units')
  if cfg.shard_by not in pipeline.SHARD_BY:
    raise bad('shard_by', f'one of {pipeline.SHARD_BY}')


def dataset_info(cfg):
  check_config(cfg)
  builder = datasets.builder(cfg, 'video')
  return pipeline.DatasetInfo(
      num_classes=builder.info.features['label'].num_classes,
      num_train=pipeline._num_examples(builder, cfg.train_split, 'train_split'),  # pylint: disable=protected-access
      num_eval=pipeline._num_examples(builder, cfg.eval_split, 'eval_split'))  # pylint: disable=protected-access


def steps_per_epoch(cfg, *, global_batch_size, process_count=None):
  """As pipeline.steps_per_epoch, counting videos (one clip per video per epoch)."""
  _, n, b = pipeline._layout(global_batch_size, 0, process_count)  # pylint: disable=protected-access
  builder = datasets.builder(cfg, 'video')
  if cfg.shard_by == 'global':
    return pipeline._steps(builder, cfg, global_batch_size, 1)  # pylint: disable=protected-access
  return pipeline._steps(builder, cfg, b, n)  # pylint: disable=protected-access


# ---------------------------------------------------------------- sampling (pure TF)


def train_indices(num_video_frames, num_frames, stride, seed):
  """int32 (num_frames,): stride apart from a random offset; indices wrap (looping)."""
  span = (num_frames - 1) * stride + 1
  offset = preprocess._randint(seed, 0, tf.maximum(num_video_frames - span, 0))  # pylint: disable=protected-access
  return (offset + tf.range(num_frames) * stride) % num_video_frames


def eval_indices(num_video_frames, num_frames, stride, clips):
  """int32 (clips, num_frames): evenly spaced clips (mmaction test-mode SampleFrames)."""
  span = (num_frames - 1) * stride + 1
  room = tf.cast(num_video_frames - span + 1, tf.float32)
  interval = room / clips
  starts = tf.cast(tf.range(clips, dtype=tf.float32) * interval + interval / 2, tf.int32)
  starts = tf.where(num_video_frames > span - 1, starts, tf.zeros_like(starts))
  return (starts[:, None] + tf.range(num_frames)[None] * stride) % num_video_frames


def _decode(frames, window=None):
  """uint8 (k, h, w, 3) from k JPEG strings; window (top, left, h, w) decodes only that."""
  if window is None:
    fn = lambda f: tf.io.decode_jpeg(f, channels=3)  # pylint: disable=unnecessary-lambda-assignment
  else:
    fn = lambda f: tf.io.decode_and_crop_jpeg(f, window, channels=3)  # pylint: disable=unnecessary-lambda-assignment
  return tf.map_fn(fn, frames, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def _normalize(x, cfg):
  mean = tf.constant(cfg.mean, tf.float32) * 255.0
  std = tf.constant(cfg.std, tf.float32) * 255.0
  return (x - mean) / std


def train_transform(cfg):
  """prep(record, seed) -> dict(video float32 (T, S, S, 3), label int32)."""
  size, t = cfg.image_size, cfg.num_frames

  def prep(ex, seed):
    s = tf.random.experimental.stateless_split(seed, 3)
    frames = ex['video']
    n = tf.shape(frames)[0]
    if cfg.single_frame:
      idx = tf.fill([t], preprocess._randint(s[0], 0, n - 1))  # pylint: disable=protected-access
    else:
      idx = train_indices(n, t, cfg.frame_stride, s[0])
    chosen = tf.gather(frames, idx)
    shape = tf.io.extract_jpeg_shape(chosen[0])
    window = tf.stack(preprocess.sample_crop(shape[0], shape[1], s[1], tuple(cfg.crop_scale),
                                             tuple(cfg.crop_ratio)))
    clip = tf.cast(_decode(chosen, window), tf.float32)
    clip = preprocess._resize(clip, [size, size], cfg.interpolation)  # pylint: disable=protected-access
    if cfg.hflip > 0:  # one decision for the whole clip
      clip = tf.where(preprocess._uniform(s[2]) < cfg.hflip, tf.reverse(clip, [2]), clip)  # pylint: disable=protected-access
    return {'video': tf.ensure_shape(_normalize(clip, cfg), [t, size, size, 3]),
            'label': tf.cast(ex['label'], tf.int32)}

  return prep


def num_views(cfg):
  return cfg.eval_clips * cfg.eval_crops


def eval_views(cfg):
  """fn(record) -> float32 (clips * crops, T, S, S, 3), clip-major."""
  size, t, clips, crops = cfg.image_size, cfg.num_frames, cfg.eval_clips, cfg.eval_crops

  def fn(ex):
    frames = ex['video']
    n = tf.shape(frames)[0]
    if cfg.single_frame:  # the centre frame of each clip, repeated
      centre = eval_indices(n, t, cfg.frame_stride, clips)[:, t // 2]
      idx = tf.tile(centre[:, None], [1, t])
    else:
      idx = eval_indices(n, t, cfg.frame_stride, clips)
    video = tf.cast(_decode(tf.gather(frames, tf.reshape(idx, [-1]))), tf.float32)
    h, w = tf.shape(video)[1], tf.shape(video)[2]
    short = tf.minimum(h, w)
    nh = tf.where(h == short, size, size * h // short)
    nw = tf.where(w == short, size, size * w // short)
    video = preprocess._resize(video, tf.stack([nh, nw]), cfg.interpolation)  # pylint: disable=protected-access
    video = tf.reshape(video, [clips, t, nh, nw, 3])
    # crops spread evenly along the long side: left, centre, right for 3
    positions = [0.5] if crops == 1 else [i / (crops - 1) for i in range(crops)]
    views = []
    for c in range(clips):
      for p in positions:
        top = tf.cast(tf.round(p * tf.cast(nh - size, tf.float32)), tf.int32)
        left = tf.cast(tf.round(p * tf.cast(nw - size, tf.float32)), tf.int32)
        views.append(video[c, :, top:top + size, left:left + size])
    views = tf.stack(views)
    return tf.ensure_shape(_normalize(views, cfg), [clips * crops, t, size, size, 3])

  return fn


# ---------------------------------------------------------------- iterators


def train_iterator(cfg, *, global_batch_size, seed, start_step=0, process_index=None,
                   process_count=None):
  """Infinite iterator of dict(video float32 (b, T, S, S, 3), label int32 (b,))."""
  check_config(cfg)
  return pipeline.train_iterator(
      cfg, global_batch_size=global_batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count, builder=datasets.builder(cfg, 'video'),
      prep=train_transform(cfg))


def eval_iterator(cfg, *, global_batch_size, process_index=None, process_count=None):
  """Finite iterator of dict(video (b, V, T, S, S, 3), label (b,), mask (b,)).

  V = eval_clips x eval_crops views of each video. Each process reads
  tfds.split_for_jax_process(eval_split); every video appears once over all
  processes, padding rows have mask 0, and all processes yield as many batches.
  """
  check_config(cfg)
  p, n, b = pipeline._layout(global_batch_size, process_index, process_count)  # pylint: disable=protected-access
  builder = datasets.builder(cfg, 'video')
  pipeline._num_examples(builder, cfg.eval_split, 'eval_split')  # pylint: disable=protected-access
  shares = [tfds.split_for_jax_process(cfg.eval_split, process_index=i, process_count=n)
            for i in range(n)]
  counts = [builder.info.splits[s].num_examples for s in shares]
  num_batches = math.ceil(max(counts) / b)
  views = eval_views(cfg)
  shape = [num_views(cfg), cfg.num_frames, cfg.image_size, cfg.image_size, 3]
  ds = pipeline._read(builder, shares[p], cfg).map(  # pylint: disable=protected-access
      lambda ex: {'video': views(ex), 'label': tf.cast(ex['label'], tf.int32),
                  'mask': tf.constant(1.0)},
      num_parallel_calls=tf.data.AUTOTUNE)
  pad = tf.data.Dataset.from_tensors({'video': tf.zeros(shape), 'label': tf.constant(0, tf.int32),
                                      'mask': tf.constant(0.0)})
  ds = ds.concatenate(pad.repeat(num_batches * b - counts[p]))
  ds = ds.batch(b, drop_remainder=True).prefetch(cfg.prefetch)
  ds = ds.with_options(pipeline._options(cfg))  # pylint: disable=protected-access
  return read_errors.named(ds.as_numpy_iterator(), cfg, builder, shares[p])

