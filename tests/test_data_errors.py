"""A damaged copy of the embedded dataset (a corrupt record, a missing or truncated
shard, an undecodable example) stops training in one `error:` line naming the
dataset, the split, the file and the command that prepares it again, exit 2;
the checkpoints stay, and after the repair the same run resumes and ends as an
uninterrupted one (in process on a tiny STViT). The command line is at the end
(a subprocess, slow)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from stvit_jax import cli, names
from stvit_jax.data import pipeline, read_errors
from stvit_jax.train import checkpoint, loop
from test_faults import tiny_config as faults_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD = 'stvit_digits/1.0.0/stvit_digits-train.tfrecord-00000-of-00001'
BAD_RECORD = 20  # with data.shuffle_buffer=1 in file order: in the second batch of 16


def flip(path, offset, count=64):
  with open(path, 'r+b') as f:
    f.seek(offset)
    data = f.read(count)
    f.seek(offset)
    f.write(bytes(b ^ 0xFF for b in data))


def undecodable(path, index=BAD_RECORD):
  """Record `index`'s image bytes replaced by text (a valid record, CRCs and all)."""
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  example = tf.train.Example.FromString(records[index])
  example.features.feature['image'].bytes_list.value[0] = b'not an image'
  records[index] = example.SerializeToString()
  with tf.io.TFRecordWriter(path) as w:
    for r in records:
      w.write(r)


DAMAGES = {
    'corrupt_record': lambda p: flip(p, os.path.getsize(p) // 2),
    'missing_shard': os.remove,
    'truncated_shard': lambda p: os.truncate(p, os.path.getsize(p) // 2),
    'undecodable_example': undecodable,
}


def copy_data(data_dir, tmp_path):
  target = tmp_path / 'tfds'
  shutil.copytree(data_dir, target, ignore=shutil.ignore_patterns('*.lock'))
  return str(target)


def tiny_config(data_dir, **fields):
  """test_faults' tiny quickstart, logging every step."""
  return faults_config(data_dir, **{'log_every_steps': 1, **fields})


def train(config, workdir, capsys):
  """(exit code, stderr) of the trainer as the command line ends it."""
  capsys.readouterr()
  code = cli.call(lambda _: loop.train_and_evaluate(config, workdir) and None, [])
  return code, capsys.readouterr().err


def train_rows(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [(r['step'], r['loss'], r['grad_norm'], r['lr']) for r in rows if r['split'] == 'train']


def params_of(workdir, step):
  raw = checkpoint.restore_on_host(os.path.join(workdir, 'checkpoints', str(step), 'params'))
  return {k: np.asarray(v) for k, v in names.flatten(raw).items()}


@pytest.mark.parametrize('how', sorted(DAMAGES))
def test_damaged_data_is_one_error_naming_it(how, data_dir, tmp_path, capsys):
  data = copy_data(data_dir, tmp_path)
  shard = os.path.join(data, SHARD)
  DAMAGES[how](shard)
  # In file order, the bad example comes in the second batch (after the step-1 save);
  # the other damages stop the filling of the record cache, before any step.
  config = tiny_config(data, **{'data.shuffle_buffer': 1})
  workdir = str(tmp_path / 'run')
  code, err = train(config, workdir, capsys)
  lines = [line for line in err.splitlines() if line.startswith('error:')]
  assert code == cli.USAGE, err
  assert len(lines) == 1 and 'Traceback' not in err, err
  line = lines[0]
  for part in ("dataset 'stvit_digits' split 'train'", shard, 'prepare it again with `rm -r ',
               os.path.dirname(shard), 'prepared_builder(', '{{', '[Op:'):
    assert (part in line) == (part not in ('{{', '[Op:')), (part, line)
  expected = {'corrupt_record': 'corrupted record at', 'missing_shard': 'no such file',
              'truncated_shard': 'truncated record at',
              'undecodable_example': 'undecodable example: Unknown image file format'}[how]
  assert expected in line, line
  if how == 'undecodable_example':
    assert 'it resumes from step 1' in line and checkpoint.has_checkpoints(workdir), line
  else:
    assert 'no checkpoint yet' in line and not checkpoint.has_checkpoints(workdir), line


def test_a_transform_bug_is_not_called_bad_data():
  error = tf.errors.InvalidArgumentError(None, None, 'Incompatible shapes: [3] vs. [4]')
  assert not read_errors.is_data_error(error)
  assert read_errors.is_data_error(tf.errors.DataLossError(None, None, 'corrupted record at 8'))


def test_the_shards_being_read_are_named_when_tensorflow_names_none(tmp_path):
  files = []
  for i, size in enumerate((100, 5000, 6000, 7000, 8000)):
    files.append(str(tmp_path / f'd-train.tfrecord-{i:05d}-of-00005'))
    open(files[-1], 'wb').write(b'x' * size)
  error = tf.errors.DataLossError(None, None, 'corrupted record at 4000 [Op:IteratorGetNext]')
  text = read_errors._candidates(error, files)  # pylint: disable=protected-access
  # the 100-byte shard cannot hold offset 4000; three of the four others are listed
  assert text.startswith(' (TensorFlow does not say which file; the 4 shards being read: ')
  assert files[0] not in text and files[1] in text and 'and 1 more' in text, text
  assert read_errors.clean('{{function_node __wrapped__X}} truncated record at 9\' failed with '
                           'Read less bytes than requested [Op:ReduceDataset] name: ') == \
      'truncated record at 9: Read less bytes than requested'


def test_eval_split_damage_names_the_eval_split(data_dir, tmp_path):
  data = copy_data(data_dir, tmp_path)
  os.remove(os.path.join(data, SHARD.replace('-train.', '-test.')))
  with pytest.raises(read_errors.DataError, match="split 'test' has a damaged or missing file"):
    list(pipeline.eval_iterator(tiny_config(data).data, global_batch_size=120))


@pytest.mark.parametrize('when', ['mid_run', 'before_resume'])
def test_repaired_data_resumes_exactly(when, data_dir, tmp_path, capsys, monkeypatch):
  """Epochs of 4 steps read from the files each time (no cache): the shard is damaged
  as epoch 2 is about to be read (mid-run) or while the run is stopped at step 4 (before
  a resume); the error keeps checkpoint 4, the restored shard lets the same run end
  exactly as an uninterrupted one."""
  data = copy_data(data_dir, tmp_path)
  shard = os.path.join(data, SHARD)
  good = open(shard, 'rb').read()
  config = tiny_config(data, total_steps=8, checkpoint_every_steps=4,
                       **{'data.cache': False, 'data.train_split': 'train[:64]'})
  reference = str(tmp_path / 'uninterrupted')
  assert train(config, reference, capsys)[0] == cli.OK
  workdir = str(tmp_path / 'run')
  if when == 'mid_run':  # one pipeline per epoch, so that epoch 1 starts after the damage
    epochs_of = pipeline.train_epochs

    def damaging(*args, **kwargs):
      if kwargs['epoch'] == 1:
        flip(shard, 10_000)  # inside the first 64 records
      return epochs_of(*args, **kwargs)
    monkeypatch.setattr(pipeline, 'EPOCHS_PER_PIPELINE', 1)
    monkeypatch.setattr(pipeline, 'train_epochs', damaging)
  else:  # a run stopped after its step-4 checkpoint (the rows it logged are replayed)
    shutil.copytree(reference, workdir)
    shutil.rmtree(os.path.join(workdir, 'checkpoints', '8'))
    flip(shard, 10_000)
  code, err = train(config, workdir, capsys)
  assert code == cli.USAGE and 'corrupted record at' in err and shard in err, err
  assert 'it resumes from step 4' in err, err
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                if s.isdigit()) == [4]
  monkeypatch.undo()
  open(shard, 'wb').write(good)
  summary = loop.train_and_evaluate(config, workdir)
  assert summary['start_step'] == 4 and summary['final_step'] == 8
  assert train_rows(workdir) == train_rows(reference)
  ours, theirs = params_of(workdir, 8), params_of(reference, 8)
  assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.slow
def test_command_line_names_the_damaged_shard(data_dir, tmp_path):
  data = copy_data(data_dir, tmp_path)
  shard = os.path.join(data, SHARD)
  flip(shard, os.path.getsize(shard) // 2)
  proc = subprocess.run(
      [sys.executable, '-m', 'stvit_jax.main', '--config=configs/quickstart.py',
       f'--workdir={tmp_path / "run"}', f'--config.data.data_dir={data}',
       '--config.model.embed_dim=16', '--config.model.num_heads=2', '--config.batch_size=16',
       '--config.warmup_steps=1', '--config.total_steps=4', '--config.eval_every_steps=0'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT),
      capture_output=True, text=True, timeout=600)
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert proc.returncode == cli.USAGE, proc.stderr[-3000:]
  assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert shard in errors[0] and 'corrupted record at' in errors[0], errors[0]
