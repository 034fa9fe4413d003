"""The tf.data service for training input: disaggregated CPU workers, same batches.

With `data.service_address='grpc://dispatcher:5050'` each process sends its
train pipeline (a job per pipeline of epochs) to a tf.data service dispatcher;
the workers read the records (so the data_dir must be reachable from them, e.g.
gs://), decode and augment, and stream finished uint8 batches back. The host then only feeds the
accelerators.

Exact resume survives this: batch j of the pipeline is built by exactly one
worker, from the same records and per-example seeds as without the service
(the stream is sharded by whole batches with `ShardingPolicy.HINT`, after the
shuffle/skip and before any decoding), and `in_order` restores the order in
which the workers' batches interleave. HINT sharding needs the dispatcher to
know its workers: start it with `worker_addresses` (launch/README.md).
"""
import uuid

import tensorflow as tf

SERVICE = tf.data.experimental.service


def shard_batches(ds, batch):
  """Elements (tuples: position, record, ...) -> this worker's groups of `batch` consecutive
  ones, each element tagged with its batch number first; the shard is decided before
  anything is decoded."""
  ds = ds.batch(batch, drop_remainder=True).enumerate()
  ds = ds.shard(tf.data.experimental.SHARD_HINT, tf.data.experimental.SHARD_HINT)  # -> (workers, i)
  return ds.flat_map(lambda index, group: tf.data.Dataset.from_tensor_slices(group).map(
      lambda *element: (index, *element)))


def distribute(ds, address, job):
  """Runs `ds` on the service's workers; a fresh job (name) per call."""
  return ds.apply(SERVICE.distribute(
      processing_mode=SERVICE.ShardingPolicy.HINT, service=address,
      job_name=f'{job}-{uuid.uuid4().hex[:12]}'))


def in_order(batches, first, count):
  """Yields batches `first`, `first` + 1, ... (`count` of them) from `batches`, which
  carry their number as 'batch_index' and arrive interleaved across workers."""
  waiting = {}
  want = first
  for batch in batches:
    index = int(batch.pop('batch_index')[0])
    if index < want or index in waiting:  # every worker built every batch
      raise RuntimeError(f'batch {index} came twice from the tf.data service: its dispatcher '
                         'does not shard; start it with DispatcherConfig(worker_addresses=[...])')
    waiting[index] = batch
    while want in waiting:
      yield waiting.pop(want)
      want += 1
  if want != first + count:
    raise RuntimeError(f'the tf.data service returned batches up to {want} of '
                       f'[{first}, {first + count}): a worker failed or was removed')
