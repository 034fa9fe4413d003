"""Metrics of a run: `metrics.jsonl` and TensorBoard summaries in the workdir.

A run resumed at step S replays the steps after S that an interrupted attempt
may have logged already: their rows are dropped from metrics.jsonl, and
TensorBoard is sent a SessionLog(START) at S + 1, on which it drops the earlier
attempt's events of those steps.
"""
from __future__ import annotations

import json
import os
import time

import jax


class MetricWriter:
  """JSONL (`metrics.jsonl`) and TensorBoard (`tensorboard/`) in the workdir, process 0 only."""

  def __init__(self, workdir, start_step=0):
    """Rows of steps after `start_step` (written before a kill, about to be replayed)
    are dropped from metrics.jsonl, and TensorBoard is told to purge them."""
    self.active = jax.process_index() == 0
    if self.active:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self.tf = tf
      tf.io.gfile.makedirs(workdir)
      path = os.path.join(workdir, 'metrics.jsonl')
      _drop_rows_after(tf.io.gfile, path, start_step)
      self.jsonl = tf.io.gfile.GFile(path, 'a')
      tb_dir = os.path.join(workdir, 'tensorboard')
      if start_step and tf.io.gfile.exists(tb_dir):
        _tensorboard_purge(tf, tb_dir, start_step + 1)
      self.tb = tf.summary.create_file_writer(tb_dir)
      self.scalar_metadata = tf.compat.v1.SummaryMetadata(
          plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name='scalars'))

  def write(self, step, split_name, scalars):
    if not self.active:
      return
    self.jsonl.write(json.dumps({'step': step, 'split': split_name, **scalars}) + '\n')
    self.jsonl.flush()
    with self.tb.as_default(step=step):
      for k, v in scalars.items():
        # = tensorboard's tf.summary.scalar, which needs the tensorboard package.
        self.tf.summary.write(f'{split_name}/{k}', self.tf.constant(v, self.tf.float32),
                              metadata=self.scalar_metadata)
    self.tb.flush()

  def close(self):
    if self.active:
      self.jsonl.close()
      self.tb.close()


def _drop_rows_after(gfile, path, step):
  """Rewrites metrics.jsonl without rows of steps > `step` (replayed after a resume)."""
  if not gfile.exists(path):
    return
  with gfile.GFile(path) as f:
    lines = f.read().splitlines()
  kept = [line for line in lines if line.strip() and json.loads(line).get('step', 0) <= step]
  if len(kept) == len([line for line in lines if line.strip()]):
    return
  with gfile.GFile(path + '.tmp', 'w') as f:
    f.write(''.join(line + '\n' for line in kept))
  gfile.rename(path + '.tmp', path, overwrite=True)


def _tensorboard_purge(tf, tb_dir, step):
  """An event file holding SessionLog(START) at `step`: TensorBoard then drops the
  events of steps >= `step` read before it (those of the killed attempt). Named to
  sort after the earlier files and before the new writer's (hostname.<pid>...)."""
  import socket  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  event = event_pb2.Event(wall_time=time.time(), step=step)
  event.session_log.status = event_pb2.SessionLog.START
  name = f'events.out.tfevents.{int(time.time()) - 1}.{socket.gethostname()}.0.purge'
  with tf.io.TFRecordWriter(os.path.join(tb_dir, name)) as w:
    w.write(event.SerializeToString())
