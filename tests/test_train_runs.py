"""End-to-end runs of `python -m stvit_jax.main` in subprocesses (the embedded digits):
8 fake devices with data+fsdp sharding match 1 device; a run killed with SIGKILL and
restarted ends bitwise equal to an uninterrupted one; SIGTERM saves and exits cleanly."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stvit_jax.train import checkpoint
from stvit_jax import cli

pytestmark = pytest.mark.slow  # every test runs `python -m stvit_jax.main` in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
# A tiny STViT-DeiT with everything random switched on: mixup/cutmix, stochastic
# depth, gradient accumulation, EMA, async checkpoints every 10 steps.
TINY = ['--config.model.embed_dim=32', '--config.model.num_heads=2', '--config.model.depth=3',
        '--config.model.num_base_layers=1', '--config.model.drop_path_rate=0.1',
        '--config.mixup.prob=1.0', '--config.optim.grad_accum_steps=2', '--config.ema_decay=0.9',
        '--config.batch_size=16', '--config.eval_batch_size=40', f'--config.total_steps={STEPS}',
        '--config.warmup_steps=5', '--config.checkpoint_every_steps=10',
        f'--config.eval_every_steps={STEPS}', '--config.log_every_steps=1']


def start(workdir, data_dir, *extra, devices=1):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-m', 'stvit_jax.main', '--config=configs/quickstart.py',
         f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *TINY, *extra]
  log = open(os.path.join(str(workdir) + '.log'), 'w')
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(proc, workdir, timeout=600, expect=0):
  rc = proc.wait(timeout=timeout)
  log = open(str(workdir) + '.log').read()
  assert rc == expect, log[-3000:]
  return log


def train_losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {r['step']: r['loss'] for r in rows if r['split'] == 'train'}


def last_logged_step(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  steps = [json.loads(line)['step'] for line in open(path) if line.endswith('\n')]
  return max(steps, default=0)


def final_state(workdir, step=STEPS):
  out = {}
  for item in ('params', 'train'):
    tree = checkpoint.restore_on_host(os.path.join(workdir, 'checkpoints', str(step), item))
    out.update({f'{item}{k}': v for k, v in _flat(tree).items()})
  return out


def _flat(tree, prefix=''):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f'{prefix}/{key}').items()}
  if isinstance(tree, (list, tuple)):
    return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f'{prefix}/{i}').items()}
  return {} if tree is None else {prefix: np.asarray(tree)}


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  """An uninterrupted 1-device run of STEPS steps."""
  workdir = str(tmp_path_factory.mktemp('runs') / 'reference')
  finish(start(workdir, data_dir), workdir)
  return workdir


def test_eight_devices_data_fsdp_match_one_device(reference, data_dir, tmp_path):
  workdir = str(tmp_path / 'mesh4x2')
  log = finish(start(workdir, data_dir, '--config.mesh.data=4', '--config.mesh.fsdp=2',
                     devices=8), workdir)
  assert "mesh {'data': 4, 'fsdp': 2}" in log
  ref, got = train_losses(reference), train_losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1)) and sorted(ref) == sorted(got)
  diffs = [abs(ref[s] - got[s]) for s in sorted(ref)]
  print(f'8 devices (data 4 x fsdp 2) vs 1: max |loss difference| {max(diffs):.3g}')
  assert max(diffs) <= 1e-5, diffs
  # parameters were sharded over fsdp: the checkpoint is the same pytree
  a, b = final_state(reference), final_state(workdir)
  assert a.keys() == b.keys()
  print('max |final state difference|:', max(float(np.max(np.abs(a[k] - b[k]))) for k in a))
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=k)


def test_sigkill_then_restart_is_bitwise_equal_to_uninterrupted(reference, data_dir, tmp_path):
  workdir = str(tmp_path / 'killed')
  proc = start(workdir, data_dir)
  deadline = time.time() + 300
  while last_logged_step(workdir) < 25 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, 'the run ended before it could be killed; make it longer'
  killed_at = last_logged_step(workdir)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert killed_at < STEPS
  finish(start(workdir, data_dir), workdir)  # same command: resumes
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert 10 <= summary['start_step'] <= killed_at and summary['start_step'] % 10 == 0
  assert summary['final_step'] == STEPS
  a, b = final_state(reference), final_state(workdir)
  assert a.keys() == b.keys() and any(k.startswith('train/ema') for k in a)
  unequal = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not unequal, unequal
  assert train_losses(reference)[STEPS] == train_losses(workdir)[STEPS]


def test_sigterm_saves_and_exits_preempted(data_dir, tmp_path):
  workdir = str(tmp_path / 'terminated')
  proc = start(workdir, data_dir, '--config.total_steps=100000',
               '--config.checkpoint_every_steps=1000', '--config.eval_every_steps=100000')
  deadline = time.time() + 300
  while last_logged_step(workdir) < 3 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  # A preempted run is not a finished one: exit 75 (cli.PREEMPTED) tells launch scripts.
  log = finish(proc, workdir, timeout=120, expect=cli.PREEMPTED)
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['stopped_early'] and 3 <= summary['final_step'] < 1000
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(summary['final_step'])]
  assert 'SIGTERM' in log and 'stop requested' in log


def test_batch_not_divisible_by_devices_fails_clearly(data_dir, tmp_path):
  workdir = str(tmp_path / 'bad_batch')
  proc = start(workdir, data_dir, '--config.batch_size=12', devices=8)
  assert proc.wait(timeout=300) != 0
  log = open(workdir + '.log').read()
  assert 'config.batch_size=12 must be divisible by the number of devices (8)' in log
