"""The trainer as cooperating processes (`python -m stvit_jax.main --num_processes=...`):
2 processes x 4 fake CPU devices train exactly like 1 process x 8 devices (data.shard_by
'global'); a process that dies or never starts makes the others fail, not hang."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from stvit_jax.train import checkpoint
from stvit_jax.runtime import distributed
from stvit_jax import names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
# Tiny STViT-DeiT with every random part on (mixup/cutmix, stochastic depth) and
# gradient accumulation; one checkpoint at the end.
TINY = ['--config.model.embed_dim=32', '--config.model.num_heads=2', '--config.model.depth=3',
        '--config.model.num_base_layers=1', '--config.model.drop_path_rate=0.1',
        '--config.mixup.prob=1.0', '--config.optim.grad_accum_steps=2',
        '--config.batch_size=16', '--config.eval_batch_size=40', f'--config.total_steps={STEPS}',
        '--config.warmup_steps=2', f'--config.checkpoint_every_steps={STEPS}',
        f'--config.eval_every_steps={STEPS}', '--config.log_every_steps=1']
TIMEOUTS = {'STVIT_JAX_HEARTBEAT_TIMEOUT': '10', 'STVIT_JAX_INIT_TIMEOUT': '60'}


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir, data_dir, *extra, processes=1, devices=8, env=None, only=None,
           program=('-m', 'stvit_jax.main')):
  """`processes` trainers sharing one coordinator, `devices` fake CPU devices each
  (`only`: start just these process ids; `program`: the interpreter's arguments that
  run the trainer)."""
  port, procs = free_port(), []
  for i in range(processes) if only is None else only:
    e = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
         'JAX_PLATFORMS': 'cpu', **TIMEOUTS, **(env or {})}
    dist = ([f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={processes}',
             f'--process_id={i}'] if processes > 1 else [])
    cmd = [sys.executable, *program, '--config=configs/quickstart.py',
           f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *TINY, *dist, *extra]
    log = open(f'{workdir}.{i}.log', 'w')
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=log, stderr=subprocess.STDOUT))
  return procs


def logs(workdir, n):
  return [open(f'{workdir}.{i}.log').read() for i in range(n)]


def finish(procs, workdir, timeout=300):
  rcs = [p.wait(timeout=timeout) for p in procs]
  out = logs(workdir, len(procs))
  assert rcs == [0] * len(procs), '\n=====\n'.join(o[-3000:] for o in out)
  return out


def train_losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {r['step']: r['loss'] for r in rows if r['split'] == 'train'}


def final_state(workdir):
  out = {}
  for item in ('params', 'train'):
    tree = checkpoint.restore_on_host(os.path.join(workdir, 'checkpoints', str(STEPS), item))
    out.update({f'{item}/{p}': np.asarray(x) for p, x in names.flatten(tree).items()})
  return out


@pytest.mark.slow
def test_two_processes_match_one(data_dir, tmp_path):
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  t0 = time.time()
  runs = launch(one, data_dir), launch(two, data_dir, processes=2, devices=4)  # concurrently
  (log1,), log2 = finish(runs[0], one), finish(runs[1], two)
  print(f'1 x 8 and 2 x 4 devices side by side: {time.time() - t0:.1f}s')
  assert "process 0 of 1: 8 local / 8 global devices (cpu" in log1
  for i in (0, 1):
    assert f'process {i} of 2: 4 local / 8 global devices (cpu' in log2[i]
    assert "mesh {'data': 8, 'fsdp': 1}" in log2[i]
  assert 'summary:' in log2[0] and 'step 6/6' in log2[0]
  assert 'step 6/6' not in log2[1]  # progress logs come from process 0 only
  ref, got = train_losses(one), train_losses(two)
  assert sorted(ref) == sorted(got) == list(range(1, STEPS + 1))
  diffs = [abs(ref[s] - got[s]) for s in sorted(ref)]
  print('per-step |loss difference|:', diffs)
  assert max(diffs) <= 1e-5, diffs
  a, b = final_state(one), final_state(two)
  assert a.keys() == b.keys() and len(a) > 10
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  print('max |final parameter/optimizer state difference|:', worst)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)
  ev1, ev2 = (json.load(open(os.path.join(w, 'summary.json'))) for w in (one, two))
  assert ev1['eval_num_examples'] == ev2['eval_num_examples'] == 360
  assert abs(ev1['eval_top1'] - ev2['eval_top1']) <= 1 / 360


@pytest.mark.slow
def test_killed_process_makes_the_survivor_fail(data_dir, tmp_path):
  workdir = str(tmp_path / 'killed')
  procs = launch(workdir, data_dir, '--config.total_steps=100000',
                 '--config.eval_every_steps=100000', '--config.checkpoint_every_steps=100000',
                 processes=2, devices=4)
  # Only a hang guard: two processes compiling on a loaded 2-core machine took > 240 s.
  metrics, deadline = os.path.join(workdir, 'metrics.jsonl'), time.time() + 600
  while not (os.path.exists(metrics) and open(metrics).read().count('\n') >= 2):
    assert all(p.poll() is None for p in procs), logs(workdir, 2)
    assert time.time() < deadline, 'the run did not start training'
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGKILL)
  t0 = time.time()
  try:
    rc = procs[0].wait(timeout=120)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail('process 0 still running 120 s after process 1 was killed')
  elapsed = time.time() - t0
  log = logs(workdir, 1)[0]
  print(f'survivor exited with {rc} after {elapsed:.1f}s:', log[-600:])
  assert rc != 0
  assert 'JAX distributed service detected fatal errors' in log, log[-3000:]
  assert elapsed < 120


@pytest.mark.slow
def test_missing_process_fails_clearly(data_dir, tmp_path):
  workdir = str(tmp_path / 'alone')
  (proc,) = launch(workdir, data_dir, processes=2, devices=4, only=[0],
                   env={'STVIT_JAX_INIT_TIMEOUT': '5'})  # process 1 never starts
  rc = proc.wait(timeout=120)
  log = logs(workdir, 1)[0]
  assert rc != 0
  assert 'all processes must connect within 5 s' in log, log[-3000:]
  assert 'DEADLINE_EXCEEDED' in log and 'RegisterTask' in log, log[-3000:]


def test_settings_from_flags_environment_or_auto():
  env = {'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'}
  assert distributed.settings(environ={}) == ('single', {})
  assert distributed.settings(environ=env) == (
      'explicit', {'coordinator_address': 'h:1', 'num_processes': 4, 'process_id': 3})
  assert distributed.settings('a:2', 2, 0, environ=env)[1] == {
      'coordinator_address': 'a:2', 'num_processes': 2, 'process_id': 0}  # flags win
  assert distributed.settings(environ={'STVIT_JAX_INIT': '1'}) == ('auto', {})
  with pytest.raises(ValueError, match='num_processes, process_id missing'):
    distributed.settings('a:2', environ={})
  with pytest.raises(ValueError, match=r'--process_id=2 must be in \[0, --num_processes=2\)'):
    distributed.settings('a:2', 2, 2, environ={})
