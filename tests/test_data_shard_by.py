"""data.shard_by: 'global' gives the same global batches for any process count
(each process keeps its rows of the shared stream); 'process' keeps per-process shares."""
import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from stvit_jax.data import defaults
from stvit_jax.data import pipeline

BATCH = 32  # global


@pytest.fixture(scope='module')
def cfg(data_dir):
  c = defaults.data_config('stvit_digits')
  c.data_dir = data_dir
  c.crop_scale = (0.3, 1.0)  # random crops: rows only agree if their seeds agree
  return c


def global_batches(cfg, n, start_step, count):
  """The global batches of steps [start_step, start_step + count) assembled from n processes."""
  its = [pipeline.train_iterator(cfg, global_batch_size=BATCH, seed=3, start_step=start_step,
                                 process_index=p, process_count=n) for p in range(n)]
  out = []
  for parts in itertools.islice(zip(*its), count):
    assert all(part['label'].shape == (BATCH // n,) for part in parts)
    out.append({k: np.concatenate([part[k] for part in parts]) for k in parts[0]})
  return out


def test_defaults():
  assert defaults.data_config('stvit_digits').shard_by == 'global'
  assert defaults.data_config().shard_by == 'process'


def test_global_batches_do_not_depend_on_process_count(cfg):
  assert cfg.shard_by == 'global'
  steps = pipeline.steps_per_epoch(cfg, global_batch_size=BATCH)
  assert steps == 1437 // BATCH
  for n in (2, 4):
    assert pipeline.steps_per_epoch(cfg, global_batch_size=BATCH, process_count=n) == steps
  start = steps - 1  # across the epoch boundary, resumed mid-run
  one = global_batches(cfg, 1, start, 3)
  for n in (2, 4):
    got = global_batches(cfg, n, start, 3)
    for a, b in zip(one, got):
      np.testing.assert_array_equal(a['label'], b['label'])
      np.testing.assert_array_equal(a['image'], b['image'])
  # one process: 'global' is exactly the former per-process pipeline
  cfg_process = cfg.copy_and_resolve_references()
  cfg_process.shard_by = 'process'
  same = global_batches(cfg_process, 1, start, 3)
  for a, b in zip(one, same):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_process_shards_are_disjoint_and_differ_from_global(cfg):
  c = cfg.copy_and_resolve_references()
  c.shard_by = 'process'
  steps = pipeline.steps_per_epoch(c, global_batch_size=BATCH, process_count=2)
  assert steps == (1437 // 2) // (BATCH // 2)
  per_process = global_batches(c, 2, 0, 1)[0]
  shared = global_batches(cfg, 2, 0, 1)[0]
  assert not np.array_equal(per_process['image'], shared['image'])


def epoch_rows(cfg, n):
  """The dataset rows ('index') each of n processes reads in epoch 0, at a global batch of
  n: 1437 = 3 * 479, so with n = 3 nothing is dropped and an epoch is the whole split."""
  only_index = lambda ex, seed: {'index': ex['index'], 'label': ex['label']}
  steps = pipeline.steps_per_epoch(cfg, global_batch_size=n, process_count=n)
  assert steps == 1437 // n
  its = [pipeline.train_iterator(cfg, global_batch_size=n, seed=5, process_index=p,
                                 process_count=n, prep=only_index) for p in range(n)]
  return [np.concatenate([b['index'] for b in itertools.islice(it, steps)]) for it in its]


@pytest.mark.parametrize('shard_by', ['process', 'global'])
def test_shards_are_disjoint_and_cover_the_split(cfg, shard_by):
  c = cfg.copy_and_resolve_references()
  c.shard_by = shard_by
  # The split's rows, read straight from TFDS (not through the pipeline).
  train = tfds.builder('stvit_digits', data_dir=c.data_dir).as_dataset(split='train')
  everything = np.sort([int(ex['index']) for ex in train.as_numpy_iterator()])
  assert len(everything) == 1437
  rows = epoch_rows(c, 3)
  for r in rows:
    assert len(r) == 479 and len(np.unique(r)) == 479  # no row twice in a process
  for i, j in itertools.combinations(range(3), 2):
    assert not set(rows[i]) & set(rows[j]), (shard_by, i, j)  # no row in two processes
  np.testing.assert_array_equal(np.sort(np.concatenate(rows)), everything)  # nothing missing


def test_bad_value_names_the_field(cfg):
  c = cfg.copy_and_resolve_references()
  c.shard_by = 'host'
  with pytest.raises(ValueError, match=r"data.shard_by='host' is invalid: expected one of "
                                       r"\('process', 'global'\)"):
    pipeline.train_iterator(c, global_batch_size=BATCH, seed=0)
