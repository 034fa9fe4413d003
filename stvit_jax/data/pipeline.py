"""TFDS input pipelines: per-process shards, deterministic and resumable by step.

The batch for global step t depends only on (config, seed, t, process layout):
epoch e = t // steps_per_epoch reads the records in a file order and shuffle
seeded by f(seed, e); already consumed records are skipped before they are
decoded; every example's augmentation is seeded by (seed, e, process, position
in the epoch). So resuming is rebuilding with `start_step`. One tf.data pipeline
runs the epochs in turn (`train_epochs`, seeds as tensors), so an epoch boundary
costs no new pipeline: no transform tracing, no start-up.

What a dataset is (builder, per-example transforms, example spec) is its row in
`datasets.DATASETS`; everything here is the same for every row.

`data.shard_by` says how processes share the data: 'process' (each reads its
own even share of the split: the right thing for ImageNet on a pod) or
'global' (every process reads the same shuffled stream of the whole split and
keeps its rows of each global batch, with augmentation seeded by the global
position: the global batch at step t is then the same for any process count).
"""
import dataclasses
import math

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from stvit_jax.data import augment
from stvit_jax.data import datasets
from stvit_jax.data import device_augment
from stvit_jax.data import preprocess
from stvit_jax.data import read_errors
from stvit_jax.data import service

try:  # tf.data must not take accelerator memory from JAX
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF already initialised its devices
  pass


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train: int
  num_eval: int


# ---------------------------------------------------------------- builder and checks


def _check_config(cfg):
  def bad(field, valid):
    return ValueError(f'data.{field}={cfg[field]!r} is invalid: expected {valid}')

  if not isinstance(cfg.image_size, int) or cfg.image_size < 1:
    raise bad('image_size', 'a positive int')
  if not 0 < cfg.crop_pct <= 1:
    raise bad('crop_pct', 'a float in (0, 1], e.g. 0.875 (resize 256, crop 224)')
  if cfg.interpolation not in preprocess.INTERPOLATIONS:
    raise bad('interpolation', f'one of {preprocess.INTERPOLATIONS}')
  for field in ('hflip', 'reprob'):
    if not 0 <= cfg[field] <= 1:
      raise bad(field, 'a probability in [0, 1]')
  if cfg.color_jitter < 0:
    raise bad('color_jitter', 'a float >= 0 (0 disables)')
  lo, hi = cfg.crop_scale
  if not 0 < lo <= hi <= 1:
    raise bad('crop_scale', '(min, max) with 0 < min <= max <= 1')
  lo, hi = cfg.crop_ratio
  if not 0 < lo <= hi:
    raise bad('crop_ratio', '(min, max) aspect ratios with 0 < min <= max')
  for field in ('mean', 'std'):
    if len(cfg[field]) != 3:
      raise bad(field, 'three per-channel values in [0, 1] units')
  if cfg.shuffle_buffer < 1:
    raise bad('shuffle_buffer', 'an int >= 1')
  for field in TF_DATA_FIELDS + ('prefetch',):
    if field in cfg and (not isinstance(cfg[field], int) or cfg[field] < 0):
      raise bad(field, 'an int >= 0 (0: the tf.data default)')
  address = cfg.get('service_address')
  if address is not None and (not isinstance(address, str) or not address):
    raise bad('service_address', "None or a tf.data service dispatcher, 'grpc://host:port'")
  if address and cfg.cache:
    raise bad('cache', 'False with data.service_address: the service workers read the records')
  if device_augment.normalize_on(cfg) not in device_augment.NORMALIZE_ON:
    raise bad('normalize_on', f'one of {device_augment.NORMALIZE_ON}')
  if _shard_by(cfg) not in SHARD_BY:
    raise bad('shard_by', f'one of {SHARD_BY}')
  if cfg.randaugment:
    try:
      augment.parse_policy(cfg.randaugment)
    except ValueError as e:
      raise ValueError(f'data.{e}') from None


def _num_examples(builder, split, field='split'):
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise ValueError(f'data.{field}={split!r} is not a split of {builder.name!r}; '
                     f'available: {sorted(builder.info.splits.keys())}') from e


def dataset_info(cfg):
  _check_config(cfg)
  builder = datasets.builder(cfg)
  return DatasetInfo(
      num_classes=builder.info.features['label'].num_classes,
      num_train=_num_examples(builder, cfg.train_split, 'train_split'),
      num_eval=_num_examples(builder, cfg.eval_split, 'eval_split'))


# ---------------------------------------------------------------- sharding

SHARD_BY = ('process', 'global')


def _shard_by(cfg):
  return cfg.get('shard_by', 'process')  # data configs written before the field existed


def process_split(split, process_index, process_count, *, drop_remainder):
  """This process's contiguous, even share of `split` (a TFDS sub-split)."""
  return tfds.split_for_jax_process(split, process_index=process_index,
                                    process_count=process_count, drop_remainder=drop_remainder)


def _layout(global_batch_size, process_index, process_count):
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  if global_batch_size < n or global_batch_size % n:
    raise ValueError(f'global_batch_size={global_batch_size} must be a positive multiple of '
                     f'the process count ({n})')
  if not 0 <= p < n:
    raise ValueError(f'process_index={p} must be in [0, process_count={n})')
  return p, n, global_batch_size // n


def _steps(builder, cfg, batch, process_count):
  shares = [process_split(cfg.train_split, i, process_count, drop_remainder=True)
            for i in range(process_count)]
  _num_examples(builder, cfg.train_split, 'train_split')  # clear error for a bad split
  steps = min(builder.info.splits[s].num_examples for s in shares) // batch
  if steps < 1:
    raise ValueError(f'global_batch_size={batch * process_count} is larger than '
                     f'{cfg.name}:{cfg.train_split} split into {process_count} process shares')
  return steps


def steps_per_epoch(cfg, *, global_batch_size, process_count=None):
  """(num_train // process_count) // per-process batch; the remainder is dropped each epoch.

  With data.shard_by='global': num_train // global_batch_size, for any process count.
  """
  _, n, b = _layout(global_batch_size, 0, process_count)
  if _shard_by(cfg) == 'global':
    return _steps(datasets.builder(cfg), cfg, global_batch_size, 1)
  return _steps(datasets.builder(cfg), cfg, b, n)


# ---------------------------------------------------------------- datasets


TF_DATA_FIELDS = ('threadpool_size', 'intra_op_threads', 'autotune_cpu_budget')


def _options(cfg=None):
  """tf.data options from data.threadpool_size / intra_op_threads / autotune_cpu_budget."""
  cfg = cfg if cfg is not None else {}
  options = tf.data.Options()
  options.deterministic = True  # exact resume: the batch at step t depends on t only
  options.experimental_optimization.map_parallelization = True
  if cfg.get('threadpool_size', 0):
    options.threading.private_threadpool_size = cfg['threadpool_size']
  # One thread per op: images are already processed in parallel, one per map call.
  options.threading.max_intra_op_parallelism = cfg.get('intra_op_threads', 1)
  if cfg.get('autotune_cpu_budget', 0):
    options.autotune.cpu_budget = cfg['autotune_cpu_budget']
  return options


def _seed(*values):
  """A stable 31-bit int from ints (numpy SeedSequence)."""
  return int(np.random.SeedSequence(list(values)).generate_state(1)[0] >> 1)


def _read(builder, split, cfg=None, *, shuffle_seed=None):
  """Undecoded records; files in seeded order when shuffle_seed is given.

  Images and video frames stay encoded: the transforms decode what they use.
  """
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False,
                                options=_options(cfg))
  skip = {k: tfds.decode.SkipDecoding() for k in ('image', 'video')
          if k in builder.info.features}
  return builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                            decoders=skip, read_config=read_config)


EPOCHS_PER_PIPELINE = 1000  # epochs one tf.data pipeline spans (its seed table's length)


def _epoch_seeds(seed, process_index, epochs):
  """int64 (len(epochs), 3): each epoch's shuffle seed and example seed base (the
  per-epoch definition's seeds, computed here so the pipeline takes them as tensors)."""
  return np.array([[_seed(seed, e), _seed(seed, e, process_index, 1),
                    _seed(seed, e, process_index, 2)] for e in epochs], np.int64)


def train_epochs(builder, cfg, *, split, epoch, seed, batch, steps, epochs=1, start_batch=0,
                 process_index=0, records=None, keep=(0, 1), prep=None):
  """Batches [start_batch, steps) of epoch `epoch`, then all batches of the next
  epochs - 1 epochs, of this process's share: one tf.data.Dataset.

  Every epoch is the per-epoch definition (module docstring): its own read in file order
  shuffle_seed = f(seed, e), shuffle, take and skip, before anything is decoded; one
  flat_map runs them in turn with each epoch's seeds as tensors, so the transform is
  traced and the pipeline started once for all `epochs`, not at every epoch boundary.
  keep=(i, n): the stream is of global batches of n * batch records, of which this
  process keeps rows [i * batch, (i + 1) * batch) (data.shard_by='global').
  prep(record, seed) -> example dict (default: the dataset table's train transform).
  """
  rows = batch * keep[1]
  mine, size = np.int64(keep[0]), np.int64(batch)
  first_skip = np.int64(start_batch * rows)

  def one_epoch(index, seeds):  # -> (example seed base, position in the epoch, record)
    ds = records if records is not None else _read(builder, split, cfg, shuffle_seed=seeds[0])
    ds = ds.shuffle(cfg.shuffle_buffer, seed=seeds[0], reshuffle_each_iteration=False)
    skip = tf.where(index == 0, first_skip, np.int64(0))
    ds = ds.take(steps * rows).enumerate().skip(skip)  # skip before decoding
    if keep[1] > 1:
      ds = ds.filter(lambda position, ex: (position % rows) // size == mine)
    return ds.map(lambda position, ex: (seeds[1:], position, ex))

  table = _epoch_seeds(seed, process_index, range(epoch, epoch + epochs))
  ds = tf.data.Dataset.from_tensor_slices((np.arange(epochs, dtype=np.int64), table))
  ds = ds.flat_map(one_epoch)
  if prep is None:
    prep = datasets.get(cfg.name).train_transform(cfg, builder)

  def seeded(base, position, ex):
    return prep(ex, tf.random.experimental.stateless_fold_in(base, position))

  prefetch = cfg.prefetch or tf.data.AUTOTUNE
  address = cfg.get('service_address')
  if address:  # workers build whole batches, tagged with their number (data/service.py)
    ds = service.shard_batches(ds, batch).map(
        lambda index, base, position, ex: dict(seeded(base, position, ex), batch_index=index),
        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True).prefetch(prefetch).with_options(_options(cfg))
    ds = service.distribute(ds, address, job=f'train-s{seed}-p{process_index}-e{epoch}')
    return ds.prefetch(prefetch)
  ds = ds.map(seeded, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True)  # epochs hold whole batches: none spans two
  return ds.prefetch(prefetch).with_options(_options(cfg))


def train_epoch(builder, cfg, **kwargs):
  """Batches [start_batch, steps) of one epoch: `train_epochs` with epochs=1."""
  return train_epochs(builder, cfg, epochs=1, **kwargs)


def batch_spec(cfg, batch_size, input_kind='image'):
  """{key: ((b, ...), dtype)} of a batch of `batch_size` as the train iterator yields it,
  from the dataset table's example spec (the dataset's row, else that of the model's
  input kind): uint8 images unless data.normalize_on='host'. The eval iterator adds
  'mask' float32. The trainer is built from it (train.build); nothing is read."""
  row = datasets.get(cfg.name, input_kind)
  return {k: ((batch_size, *shape), np.dtype(dtype))
          for k, (shape, dtype) in row.example_spec(cfg).items()}


def train_iterator(cfg, *, global_batch_size, seed, start_step=0, process_index=None,
                   process_count=None, builder=None, prep=None):
  """Infinite iterator of this process's rows of each global batch (`batch_spec`) from
  start_step: numpy dicts, e.g. image float32 (b, H, W, 3), label int32 (b,).

  Images are uint8 (data.normalize_on='device', the default: the train step
  normalises and erases) or float32 normalised (normalize_on='host').
  builder, prep: another dataset kind's checked builder and per-example transform
  (data/video.py); the sharding, shuffling and resume logic stays this one.
  """
  if builder is None:
    _check_config(cfg)
    builder = datasets.builder(cfg)
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed={seed!r} must be a non-negative int')
  p, n, b = _layout(global_batch_size, process_index, process_count)
  if _shard_by(cfg) == 'global':  # the whole split, global positions: as if one process
    steps = _steps(builder, cfg, b * n, 1)
    split = process_split(cfg.train_split, 0, 1, drop_remainder=True)
    keep, seed_index = (p, n), 0
  else:
    steps = _steps(builder, cfg, b, n)
    split = process_split(cfg.train_split, p, n, drop_remainder=True)
    keep, seed_index = (0, 1), p
  records = None
  if cfg.cache:  # fill the in-memory cache once; every epoch then shuffles from memory
    records = _read(builder, split, cfg).cache()
    with read_errors.translated(cfg, builder, split):  # a damaged shard: named, exit 2
      records.reduce(np.int64(0), lambda count, _: count + 1)
  epoch, start_batch = divmod(int(start_step), steps)

  def batches():  # a damaged shard or example stops the run naming it (read_errors)
    e, j = epoch, start_batch
    while True:  # one pipeline per EPOCHS_PER_PIPELINE epochs
      count = EPOCHS_PER_PIPELINE
      ds = train_epochs(builder, cfg, split=split, epoch=e, seed=seed, batch=b, steps=steps,
                        epochs=count, start_batch=j, process_index=seed_index, records=records,
                        keep=keep, prep=prep)
      if cfg.get('service_address'):  # batches arrive interleaved across workers
        yield from read_errors.named(
            service.in_order(ds.as_numpy_iterator(), 0, count * steps - j), cfg, builder, split)
      else:
        yield from read_errors.named(ds.as_numpy_iterator(), cfg, builder, split)
      e, j = e + count, 0

  return batches()


def eval_iterator(cfg, *, global_batch_size, process_index=None, process_count=None):
  """Finite iterator of dict(image, label, mask float32 (b,)); padding rows have mask 0.

  Images as in `train_iterator` (uint8 unless data.normalize_on='host').

  Every example of cfg.eval_split appears exactly once over all processes, and
  all processes yield the same number of batches.
  """
  _check_config(cfg)
  p, n, b = _layout(global_batch_size, process_index, process_count)
  builder = datasets.builder(cfg)
  _num_examples(builder, cfg.eval_split, 'eval_split')
  shares = [process_split(cfg.eval_split, i, n, drop_remainder=False) for i in range(n)]
  counts = [builder.info.splits[s].num_examples for s in shares]
  num_batches = math.ceil(max(counts) / b)
  row = datasets.get(cfg.name)
  transform = row.eval_transform(cfg, builder)

  ds = _read(builder, shares[p], cfg).map(
      lambda ex: {**transform(ex), 'mask': tf.constant(1.0)},
      num_parallel_calls=tf.data.AUTOTUNE)
  pad = tf.data.Dataset.from_tensors({
      **{k: tf.zeros(shape, dtype) for k, (shape, dtype) in row.example_spec(cfg).items()},
      'mask': tf.constant(0.0)})
  ds = ds.concatenate(pad.repeat(num_batches * b - counts[p]))
  ds = ds.batch(b, drop_remainder=True).prefetch(cfg.prefetch or tf.data.AUTOTUNE)
  ds = ds.with_options(_options(cfg))
  return read_errors.named(ds.as_numpy_iterator(), cfg, builder, shares[p])
