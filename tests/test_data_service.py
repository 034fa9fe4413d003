"""data.service_address: the train pipeline on an in-process tf.data service (one
dispatcher, two workers) gives exactly the batches of the local pipeline."""
import socket

import numpy as np
import pytest
import tensorflow as tf

from stvit_jax.data import defaults
from stvit_jax.data.builders import imagenet_like
from stvit_jax.data import pipeline

SERVICE = tf.data.experimental.service


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def dispatcher():
  """A dispatcher with two workers it knows by address (HINT sharding needs the list):
  (its address, the workers)."""
  ports = [_free_port() for _ in range(2)]
  addresses = [f'localhost:{p}' for p in ports]
  server = SERVICE.DispatchServer(SERVICE.DispatcherConfig(port=_free_port(),
                                                           worker_addresses=addresses))
  host = server.target.split('://')[1]
  workers = [SERVICE.WorkerServer(SERVICE.WorkerConfig(dispatcher_address=host,
                                                       worker_address=a, port=p))
             for a, p in zip(addresses, ports)]
  yield server.target, workers
  for w in workers:
    w.stop()
  server.stop()


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  jpegs = [imagenet_like.encode_jpeg(np.random.default_rng(i).integers(
      0, 256, (40 + i, 56, 3), dtype=np.uint8), 90) for i in range(6)]
  return imagenet_like.write_imagenet2012(str(tmp_path_factory.mktemp('tfds')), jpegs,
                                          num_train=26, num_eval=4)


def _cfg(data_dir):
  cfg = defaults.data_config()
  cfg.data_dir, cfg.image_size, cfg.shuffle_buffer, cfg.prefetch = data_dir, 32, 64, 1
  cfg.randaugment = ''  # tracing RandAugment on two workers costs time, not coverage
  return cfg


def test_service_batches_equal_local_batches_and_resume(dispatcher, data_dir):
  address, workers = dispatcher
  local = _cfg(data_dir)
  served = _cfg(data_dir)
  served.service_address = address
  # 26 records at batch 4: 6 steps per epoch; 8 steps cross into epoch 1
  ref_it = pipeline.train_iterator(local, global_batch_size=4, seed=1)
  ref = [next(ref_it) for _ in range(8)]
  it = pipeline.train_iterator(served, global_batch_size=4, seed=1)
  got = [next(it) for _ in range(8)]
  # Both workers served: each ran a task of the jobs (a worker's task count, TF's own
  # test hook), and HINT sharding gives worker k exactly the batches k, k + 2, ..., so
  # with all 8 batches there once each (in_order checks it) both made batches.
  assert all(w._num_tasks() >= 1 for w in workers), [w._num_tasks() for w in workers]
  for a, b in zip(ref, got):
    assert set(b) == {'image', 'label'} and b['image'].dtype == np.uint8
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['image'], b['image'])
  resumed = next(pipeline.train_iterator(served, global_batch_size=4, seed=1, start_step=3))
  np.testing.assert_array_equal(resumed['image'], ref[3]['image'])


def test_service_fields_are_checked(data_dir):
  cfg = _cfg(data_dir)
  cfg.service_address = ''
  with pytest.raises(ValueError, match='data.service_address'):
    pipeline.train_iterator(cfg, global_batch_size=4, seed=0)
  cfg.service_address, cfg.cache = 'grpc://localhost:1', True
  with pytest.raises(ValueError, match='data.cache=True.*service workers'):
    pipeline.train_iterator(cfg, global_batch_size=4, seed=0)


def test_in_order_restores_the_order_and_rejects_unsharded_streams():
  from stvit_jax.data import service
  batches = [{'batch_index': np.array([i] * 2), 'x': i} for i in (3, 2, 5, 4)]
  assert [b['x'] for b in service.in_order(iter(batches), 2, 4)] == [2, 3, 4, 5]
  def tagged(*indices):
    return iter([{'batch_index': np.array([i]), 'x': i} for i in indices])
  with pytest.raises(RuntimeError, match='came twice.*worker_addresses'):
    list(service.in_order(tagged(0, 1, 0), 0, 2))
  with pytest.raises(RuntimeError, match='up to 1 of'):
    list(service.in_order(tagged(0), 0, 2))
