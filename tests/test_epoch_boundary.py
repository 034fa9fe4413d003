"""One tf.data pipeline spans the epochs: its stream is the per-epoch definition (a new
pipeline per epoch, pipeline.EPOCHS_PER_PIPELINE = 1) and the resume at every epoch
boundary, batch for batch, and the train transform is traced once, not every epoch."""
import numpy as np
import pytest

from stvit_jax.data import datasets
from stvit_jax.data import defaults
from stvit_jax.data import pipeline
from stvit_jax.data.builders import imagenet_like

BATCH = 4
RECORDS = 26  # 6 steps per epoch at batch 4, 2 records dropped
STEPS = RECORDS // BATCH
EPOCHS = 3


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  jpegs = [imagenet_like.encode_jpeg(np.random.default_rng(i).integers(
      0, 256, (40 + i, 56, 3), dtype=np.uint8), 90) for i in range(6)]
  return imagenet_like.write_imagenet2012(str(tmp_path_factory.mktemp('tfds')), jpegs,
                                          num_train=RECORDS, num_eval=4)


def _cfg(data_dir, **fields):
  cfg = defaults.data_config()
  cfg.data_dir, cfg.image_size, cfg.shuffle_buffer, cfg.prefetch = data_dir, 32, 64, 1
  cfg.randaugment = ''  # its tracing costs time, not coverage: crops and flips are seeded
  for k, v in fields.items():
    cfg[k] = v
  return cfg


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(got, want):
  assert len(got) == len(want)
  for t, (a, b) in enumerate(zip(got, want)):
    assert set(a) == set(b)
    for k in b:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f'batch {t}, {k!r}')


LAYOUTS = {  # name: (data fields, process_index, process_count)
    'process': ({}, 0, 1),
    'cache': ({'cache': True}, 0, 1),
    'global, second of 2 processes': ({'shard_by': 'global'}, 1, 2),
    'process, second of 2 processes': ({}, 1, 2),
}


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_stream_is_the_per_epoch_definition_and_resume(layout, data_dir, monkeypatch):
  fields, p, n = LAYOUTS[layout]
  cfg = _cfg(data_dir, **fields)
  kw = dict(global_batch_size=BATCH * n, seed=7, process_index=p, process_count=n)
  steps = pipeline.steps_per_epoch(cfg, global_batch_size=BATCH * n, process_count=n)
  assert steps == (RECORDS // (BATCH * n) if fields.get('shard_by') else RECORDS // n // BATCH)
  stream = _take(pipeline.train_iterator(cfg, **kw), EPOCHS * steps + 1)
  with monkeypatch.context() as m:  # the per-epoch definition: one pipeline per epoch
    m.setattr(pipeline, 'EPOCHS_PER_PIPELINE', 1)
    _assert_same(_take(pipeline.train_iterator(cfg, **kw), EPOCHS * steps + 1), stream)
  for e in range(1, EPOCHS + 1):  # resumed at each boundary and one step either side
    for t in (e * steps - 1, e * steps, e * steps + 1):
      if t < len(stream):
        _assert_same([next(pipeline.train_iterator(cfg, start_step=t, **kw))], [stream[t]])
  # epochs differ (file order, shuffle and augmentation are seeded by the epoch)
  assert not np.array_equal(stream[0]['image'], stream[steps]['image'])


def test_pipelines_of_several_epochs_chain_exactly(data_dir, monkeypatch):
  """EPOCHS_PER_PIPELINE = 2: a resume mid-epoch, then pipelines of epochs (1, 2), (3, 4)."""
  cfg = _cfg(data_dir)
  kw = dict(global_batch_size=BATCH, seed=2, process_index=0, process_count=1)
  start = STEPS + 2
  want = _take(pipeline.train_iterator(cfg, start_step=start, **kw), 3 * STEPS)
  monkeypatch.setattr(pipeline, 'EPOCHS_PER_PIPELINE', 2)
  _assert_same(_take(pipeline.train_iterator(cfg, start_step=start, **kw), 3 * STEPS), want)


def test_train_transform_is_traced_once_for_all_epochs(data_dir):
  cfg = _cfg(data_dir)
  builder = datasets.builder(cfg)
  transform = datasets.get(cfg.name).train_transform(cfg, builder)
  traces = []

  def prep(record, seed):
    traces.append(1)
    return transform(record, seed)

  it = pipeline.train_iterator(cfg, global_batch_size=BATCH, seed=0, process_index=0,
                               process_count=1, builder=builder, prep=prep)
  _take(it, EPOCHS * STEPS + 1)
  assert len(traces) == 1
