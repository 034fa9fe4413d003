"""Fault injection, in process on a tiny STViT and the embedded digits: a NaN at a given
step (never saved; the first bad step named; skip mode rides through), a corrupt newest
checkpoint in several ways (set aside, the previous one restored), config changes on
resume, replayed metric rows, summary.json kept on a rerun, nothing written for a bad
init_from. Subprocess faults (disk full, SIGINT, a kill during a save) last, slow."""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from stvit_jax.configs import quickstart  # noqa: E402
from stvit_jax.train import checkpoint  # noqa: E402
from stvit_jax import cli, names
from stvit_jax.runtime import sharding
from stvit_jax.train import functional
from stvit_jax.train import loop
from stvit_jax.train import optim
from stvit_jax.train import runconfig
from stvit_jax.train import trainer


def tiny_config(data_dir, **fields):
  config = quickstart.get_config()
  for k, v in dict(embed_dim=16, num_heads=2, depth=3, num_base_layers=1).items():
    config.model[k] = v
  config.data.data_dir = data_dir
  config.data.prefetch = 1
  config.batch_size, config.eval_batch_size = 16, 120
  config.total_steps, config.warmup_steps = 4, 1
  config.checkpoint_every_steps, config.eval_every_steps, config.log_every_steps = 1, 0, 100
  for k, v in fields.items():
    node, *path = k.split('.')
    target = config
    for p in [node, *path][:-1]:
      target = target[p]
    target[([node, *path])[-1]] = v
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def finished(tmp_path_factory, data_dir):
  """A finished 4-step run (checkpoints 2, 3, 4 kept) with an eval at the end."""
  workdir = str(tmp_path_factory.mktemp('finished') / 'run')
  summary = loop.train_and_evaluate(tiny_config(data_dir, eval_every_steps=4), workdir)
  assert summary['final_step'] == 4 and summary['eval_num_examples'] == 360
  return workdir


def copy_of(workdir, tmp_path):
  shutil.copytree(workdir, tmp_path / 'run')
  return str(tmp_path / 'run')


def steps_in(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())


def params_of(workdir, step):
  raw = checkpoint.restore_on_host(os.path.join(workdir, 'checkpoints', str(step), 'params'))
  return {k: np.asarray(v) for k, v in names.flatten(raw).items()}


@pytest.fixture
def nan_at(monkeypatch):
  """nan_at(k): the train step of step k (1-based) sees NaN images -> NaN loss and grads."""
  def inject(k):
    make = trainer.make_train_step

    def poisoned(*args, **kwargs):
      step_fn = make(*args, **kwargs)

      def step(state, batch):
        bad = state['step'] == k - 1
        return step_fn(state, dict(batch, image=jnp.where(bad, jnp.nan, batch['image'])))
      return step
    monkeypatch.setattr(trainer, 'make_train_step', poisoned)
  return inject


# --- non-finite steps ------------------------------------------------------------------

def test_nan_step_is_named_and_never_saved(data_dir, tmp_path, nan_at):
  nan_at(3)  # checkpoints every step, logs every 100: only the save check can see it
  workdir = str(tmp_path / 'run')
  with pytest.raises(cli.Diverged) as err:
    loop.train_and_evaluate(tiny_config(data_dir, total_steps=6), workdir)
  message = str(err.value)
  assert 'non-finite at step 3 (loss nan' in message, message
  assert 'the last good checkpoint is step 2' in message, message
  assert steps_in(workdir) == [1, 2]
  for step in (1, 2):
    assert all(np.isfinite(v).all() for v in params_of(workdir, step).values())
  assert cli.exit_code(err.value) == cli.DIVERGED


def test_retention_keeps_the_newest_finite_checkpoint(finished, tmp_path, data_dir, nan_at):
  """The issue's case: resuming a finished run that then diverges for many steps with
  keep=3 used to rotate out every good checkpoint."""
  workdir = copy_of(finished, tmp_path)
  nan_at(6)
  config = tiny_config(data_dir, total_steps=12, resume_allow_changes='total_steps')
  with pytest.raises(cli.Diverged, match='at step 6 .* last good checkpoint is step 5'):
    loop.train_and_evaluate(config, workdir)
  assert steps_in(workdir) == [3, 4, 5]


def test_skip_nonfinite_rides_through_and_counts(data_dir, tmp_path, nan_at):
  nan_at(3)
  workdir = str(tmp_path / 'run')
  summary = loop.train_and_evaluate(
      tiny_config(data_dir, **{'optim.skip_nonfinite': 1, 'log_every_steps': 2}), workdir)
  assert summary['final_step'] == 4 and summary['skipped_updates'] == 1
  a, b = params_of(workdir, 2), params_of(workdir, 3)  # step 3 was skipped: unchanged
  assert all(np.array_equal(a[k], b[k]) for k in a)
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['skipped_updates'] for r in rows if r['split'] == 'train'] == [0, 1]
  assert all(np.isfinite(r['loss']) for r in rows)  # the mean is over finite steps


def test_two_consecutive_nonfinite_steps_exceed_skip_1(data_dir, tmp_path, monkeypatch):
  make = trainer.make_train_step

  def poisoned(*args, **kwargs):
    step_fn = make(*args, **kwargs)
    return lambda s, b: step_fn(s, dict(b, image=jnp.where(s['step'] >= 1, jnp.nan, b['image'])))
  monkeypatch.setattr(trainer, 'make_train_step', poisoned)
  with pytest.raises(cli.Diverged, match='non-finite at step 3'):
    loop.train_and_evaluate(tiny_config(data_dir, **{'optim.skip_nonfinite': 1}),
                             str(tmp_path / 'run'))


# --- corrupt checkpoints -----------------------------------------------------------------

def restore(workdir, data_dir):
  """What train_and_evaluate restores, without training: (state or None, captured)."""
  config = tiny_config(data_dir)
  mesh = sharding.make_mesh(config)
  tx = optim.make(config, optim.learning_rate(config, 4, 1))
  init = trainer.make_init_state(config, tx)
  abstract, _ = trainer.abstract_state(init, mesh, config.sharding_rules)
  _, abs_params, _, _ = functional.split(nnx.eval_shape(lambda: functional.create_model(config)))
  meta = {**checkpoint.describe(config, abs_params),
          'config': runconfig.to_dict(config)}
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=3, async_save=False)
  try:
    return ckpt.restore(abstract, meta)
  finally:
    ckpt.close()


def truncate_largest(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, 'train', '**', '*'), recursive=True)
           if os.path.isfile(f) and '/d/' in f]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.truncate(os.path.getsize(biggest) // 3)


CORRUPTIONS = {
    'truncated_data_file': truncate_largest,
    'missing_item': lambda d: shutil.rmtree(os.path.join(d, 'train')),
    'garbage_meta': lambda d: open(os.path.join(d, 'meta', 'metadata'), 'w').write('{not json'),
    'missing_meta': lambda d: shutil.rmtree(os.path.join(d, 'meta')),
}


@pytest.mark.parametrize('how', sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back(finished, tmp_path, data_dir, how, caplog):
  workdir = copy_of(finished, tmp_path)
  CORRUPTIONS[how](os.path.join(workdir, 'checkpoints', '4'))
  state = restore(workdir, data_dir)
  assert int(state['step']) == 3
  assert steps_in(workdir) == [2, 3]
  moved = glob.glob(os.path.join(workdir, 'checkpoints.corrupt', '4-*'))
  assert len(moved) == 1 and os.listdir(moved[0])  # set aside, not deleted
  warnings = [r.getMessage() for r in caplog.records if 'unreadable' in r.getMessage()]
  assert len(warnings) == 1 and '\n' not in warnings[0]
  assert 'checkpoint step 4 in ' in warnings[0] and 'moved it to' in warnings[0]


def test_no_readable_checkpoint_is_one_error(finished, tmp_path, data_dir):
  workdir = copy_of(finished, tmp_path)
  for step in (2, 3, 4):
    shutil.rmtree(os.path.join(workdir, 'checkpoints', str(step), 'params'))
  with pytest.raises(checkpoint.CheckpointError, match='no checkpoint in .* is readable: step 4: '):
    restore(workdir, data_dir)
  assert len(os.listdir(os.path.join(workdir, 'checkpoints.corrupt'))) == 3


def test_nonfinite_checkpoint_of_an_older_version_is_set_aside(finished, tmp_path, data_dir):
  workdir = copy_of(finished, tmp_path)
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=5, async_save=False)
  state = restore(workdir, data_dir)
  state['params'] = jax.tree.map(lambda x: x * jnp.nan, state['params'])
  meta = json.load(open(os.path.join(workdir, 'checkpoints', '4', 'meta', 'metadata')))
  ckpt.save(5, dict(state, step=jnp.int32(5)), {k: v for k, v in meta.items()
                                                  if k != 'data_position'}, force=True)
  ckpt.close()
  assert int(restore(workdir, data_dir)['step']) == 4


# --- config changes, replays, reruns, bad init_from --------------------------------------

def test_resume_with_changed_batch_and_seed_is_an_error(finished, tmp_path, data_dir):
  workdir = copy_of(finished, tmp_path)
  with pytest.raises(checkpoint.CheckpointError) as err:
    loop.train_and_evaluate(tiny_config(data_dir, batch_size=8, seed=1), workdir)
  message = str(err.value)
  assert 'batch_size 16 -> 8' in message and 'seed 0 -> 1' in message
  assert '--config.resume_allow_changes=batch_size,seed' in message
  # harmless fields pass; a deliberate change passes (nothing left to train here)
  loop.train_and_evaluate(tiny_config(data_dir, log_every_steps=1, eval_every_steps=4,
                                       eval_batch_size=40), workdir)
  loop.train_and_evaluate(tiny_config(data_dir, seed=1, resume_allow_changes='seed'), workdir)
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['seed'] == 1 and saved['model']['embed_dim'] == 16


def test_rerunning_a_finished_run_keeps_its_eval_numbers(finished, tmp_path, data_dir):
  workdir = copy_of(finished, tmp_path)
  before = json.load(open(os.path.join(workdir, 'summary.json')))
  loop.train_and_evaluate(tiny_config(data_dir, eval_every_steps=4), workdir)
  after = json.load(open(os.path.join(workdir, 'summary.json')))
  assert after['eval_top1'] == before['eval_top1'] and after['start_step'] == 4


def test_replayed_steps_replace_their_metric_rows(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir, log_every_steps=1, checkpoint_every_steps=2)
  loop.train_and_evaluate(config, workdir)
  # As if killed after logging step 4 but before its checkpoint was written:
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))
  loop.train_and_evaluate(config, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['step'] for r in rows if r['split'] == 'train'] == [1, 2, 3, 4]
  purge = glob.glob(os.path.join(workdir, 'tensorboard', '*.purge'))
  assert len(purge) == 1
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  event = event_pb2.Event.FromString(next(iter(tf.data.TFRecordDataset(purge))).numpy())
  assert event.step == 3 and event.session_log.status == event_pb2.SessionLog.START


def test_missing_init_from_writes_nothing(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  with pytest.raises(FileNotFoundError, match='config.init_from=.*nowhere: neither converted'):
    loop.train_and_evaluate(tiny_config(data_dir, init_from=str(tmp_path / 'nowhere')),
                             str(workdir))
  assert not workdir.exists()


# --- subprocess faults: disk full, SIGINT, a kill during a save ---------------------------

def command(workdir, data_dir, *extra):
  return [sys.executable, '-m', 'stvit_jax.main', '--config=configs/quickstart.py',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
          '--config.model.embed_dim=16', '--config.model.num_heads=2', '--config.model.depth=3',
          '--config.model.num_base_layers=1', '--config.batch_size=16',
          '--config.warmup_steps=1', '--config.eval_every_steps=0', *extra]


def environment():
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)


def _limit_file_size():
  import resource  # pylint: disable=g-import-not-at-top
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
  resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))


def _frames(traceback_text):
  """The indented frame lines at the start of a printed traceback's text."""
  lines = traceback_text.splitlines()
  return '\n'.join(lines[:next((i for i, l in enumerate(lines) if not l.startswith(' ')),
                                len(lines))])


@pytest.mark.slow
def test_disk_full_is_reported_at_once_in_one_message(finished, data_dir, tmp_path):
  """A 16 KiB file-size limit refuses the checkpoint's data files (20-56 KiB; metrics,
  config and TensorBoard files stay under 8 KiB until step 20): the first failed
  background save stops the run at once, in one line, exit 2."""
  workdir = tmp_path / 'run'
  proc = subprocess.run(command(workdir, data_dir, '--config.total_steps=40',
                                '--config.checkpoint_every_steps=10',
                                '--config.log_every_steps=1',
                                '--config.compilation_cache_dir='),  # (its reads of
                        # entries truncated by the limit print JAX's own "error: Error -5")
                        cwd=ROOT, env=environment(), capture_output=True, text=True,
                        preexec_fn=_limit_file_size, timeout=600)
  assert proc.returncode == cli.USAGE, proc.stderr[-3000:]
  # tensorstore's threads may print just before our line without a newline: find our
  # `error:` anywhere on a line, but not a library's `zlib.error: ...` in its traceback
  errors = [m.group(0) for m in re.finditer(r'(?<![\w.])error: .*', proc.stderr)]
  assert len(errors) == 1 and 'saving a checkpoint to' in errors[0], proc.stderr[-3000:]
  # No traceback through our code (tensorstore's threads still print 'Event loop is closed'
  # ones for writes pending when orbax gave up; orbax's logged ones are trimmed).
  frames = [_frames(t) for t in proc.stderr.split('Traceback (most recent call last):\n')[1:]]
  ours = [f for f in frames for line in f.splitlines() if line.strip().startswith('File "')
          and ('/stvit_jax/' in line or '/orbax/' in line)]
  assert not ours, proc.stderr[-3000:]
  logged = [json.loads(line)['step'] for line in open(workdir / 'metrics.jsonl')]
  # Noticed when orbax's finalize thread ends (steps 17-18 on a quiet machine) or, if
  # that is slower than training, at the latest by the next save, which waits for it.
  assert max(logged) <= 20, logged
  assert not (workdir / 'checkpoints' / '20').exists()


def wait_for(path, text, proc, timeout=300):
  """Until `text` is in the file `path` or, with text=None, a path matches the glob `path`."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if (glob.glob(path) if text is None else
        os.path.exists(path) and text in open(path).read()):
      return
    time.sleep(0.05)
  raise AssertionError(f'{text!r} never appeared in {path}')


@pytest.mark.slow
def test_sigint_saves_and_exits_preempted(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  log = str(workdir) + '.log'
  with open(log, 'w') as out:
    proc = subprocess.Popen(command(workdir, data_dir, '--config.total_steps=100000',
                                    '--config.checkpoint_every_steps=1000',
                                    '--config.log_every_steps=1'),
                            cwd=ROOT, env=environment(), stdout=out, stderr=subprocess.STDOUT)
    wait_for(log, 'step 3/', proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == cli.PREEMPTED, open(log).read()[-3000:]
  text = open(log).read()
  summary = json.load(open(workdir / 'summary.json'))
  assert summary['stopped_early'] and steps_in(workdir) == [summary['final_step']]
  assert 'SIGINT: will save' in text and 'Traceback' not in text


@pytest.mark.slow
def test_kill_during_a_save_resumes_from_a_complete_step(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  log = str(workdir) + '.log'
  args = ('--config.total_steps=30', '--config.checkpoint_every_steps=10',
          '--config.log_every_steps=1')
  # tests/held_save.py: the trainer with step 20's save never committed
  held = [sys.executable, os.path.join(ROOT, 'tests', 'held_save.py'),
          *command(workdir, data_dir, *args)[3:]]
  with open(log, 'w') as out:
    proc = subprocess.Popen(held, cwd=ROOT, env=environment(), stdout=out,
                            stderr=subprocess.STDOUT)
    wait_for(str(workdir / 'checkpoints' / '20.orbax-checkpoint-tmp*'), None, proc)
    wait_for(log, 'saving step 20', proc)  # handed to the background; held uncommitted
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert steps_in(workdir) == [10]  # killed in step 20's save: 10 is the newest complete one
  rerun = subprocess.run(command(workdir, data_dir, *args), cwd=ROOT, env=environment(),
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  summary = json.load(open(workdir / 'summary.json'))
  assert summary['start_step'] == 10 and summary['final_step'] == 30
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == list(range(1, 31))


def test_corrupt_checkpoint_warning_is_short_and_verbose_has_the_rest(
    finished, tmp_path, data_dir, caplog, monkeypatch):
  workdir = copy_of(finished, tmp_path)
  truncate_largest(os.path.join(workdir, 'checkpoints', '4'))
  assert int(restore(workdir, data_dir)['step']) == 3
  warning, = [r.getMessage() for r in caplog.records if 'unreadable' in r.getMessage()]
  # what (step 4, an array that cannot be read), where it went, what happens next
  assert re.search(r'checkpoint step 4 in \S+ is unreadable \(an array cannot be read'
                   r'.*\); moved it to \S+checkpoints.corrupt/4-\d+, restoring step 3 instead$',
                   warning), warning
  assert 'TensorStore' not in warning and len(warning.replace(workdir, 'W')) < 200, warning
  caplog.clear()
  workdir = copy_of(finished, tmp_path / 'verbose')
  truncate_largest(os.path.join(workdir, 'checkpoints', '4'))
  monkeypatch.setenv('STVIT_JAX_VERBOSE', '1')
  restore(workdir, data_dir)
  full = [r.getMessage() for r in caplog.records if 'the full error' in r.getMessage()]
  assert len(full) == 1 and 'TensorStore' in full[0], full
