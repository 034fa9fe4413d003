"""launch/ on the workers, executed: setup and run under a temporary HOME against the
fake worker tools of launch_harness.py, and resume.sh after preemption, suspension
and the other TPU states.
"""
from pathlib import Path
import time

import pytest

from launch_harness import (CREATE_V4_QUEUED, CREATE_V5E, DESCRIBE_V4_QUEUED, JAX_PIN, V4, V5E,
                            record_printed)


# ---------------------------------------------------------------- the worker side, executed

def _wait_for(path, timeout=20):
  """Waits for a file that is written once, in one line (a run's exit status)."""
  end = time.time() + timeout
  while not (path.exists() and path.read_text().endswith('\n')):
    assert time.time() < end, f'{path} never appeared'
    time.sleep(0.05)
  return path


def _alive(pid):
  """pid exists and is not a zombie."""
  try:
    return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


def _setup_and_run(launch, args, *overrides, **env):
  launch.set_state('tpu-vm', 'stvit-s', 'READY')
  launch('setup.sh', *args, FAKE_SSH_EXEC='1')
  return launch('run.sh', *args, '--', *overrides, FAKE_SSH_EXEC='1', **env)


def test_worker_scripts_install_and_train(launch):
  odd = ["--config.note=it's $HOME & \"q\" `x` \\n", '--config.empty=', '--config.x=a b']
  p = _setup_and_run(launch, V5E + ['--env=TFDS_DATA_DIR=gs://my bucket/$tfds'], *odd)
  run = launch.home / 'stvit_jax_runs' / 'deit_s'
  _wait_for(run / 'status')
  assert (run / 'status').read_text() == '0\n'
  argv = (launch.state / 'train.argv').read_text().split('\0')[:-1]
  assert argv == ['-m', 'stvit_jax.main', '--config=configs/deit_s.py',
                  '--workdir=gs://my-bucket/deit_s', '--config.compilation_cache_dir=gs://my-bucket/xla_cache', '--config.compilation_cache_min_compile_secs=1', *odd]  # every character arrives
  env = (launch.state / 'train.env').read_text()
  assert f'cwd={launch.home}/stvit_jax\n' in env and 'STVIT_JAX_INIT=1\n' in env
  assert 'TFDS_DATA_DIR=gs://my bucket/$tfds\n' in env
  assert (launch.home / 'stvit_jax' / '.launch_ref').read_text() == launch.sha + '\n'
  assert (launch.home / 'stvit_jax' / 'configs' / 'deit_s.py').exists()  # the commit, unpacked
  worker_log = (launch.state / 'worker.log').read_text()
  assert f'"jax[tpu]=={JAX_PIN}"' not in worker_log and f'jax[tpu]=={JAX_PIN}' in worker_log
  assert 'started deit_s (pid' in p.stdout
  assert 'exit status 0' in (run / 'log').read_text()
  # Setting up again is a no-op; --ensure leaves a finished run alone.
  assert 'is already set up' in launch('setup.sh', *V5E, FAKE_SSH_EXEC='1').stdout
  p = launch('run.sh', *V5E, '--ensure', FAKE_SSH_EXEC='1')
  assert 'deit_s has finished (exit status 0); nothing to do' in p.stdout


def test_worker_active_run_start_ensure_restart(launch):
  p = _setup_and_run(launch, V5E, FAKE_TRAIN_SLEEP='60')
  pid_file = launch.home / 'stvit_jax_runs' / 'deit_s' / 'pid'
  first = int(pid_file.read_text())
  assert _alive(first)
  p = launch('run.sh', *V5E, ok=False, FAKE_SSH_EXEC='1')
  assert 'a run is active' in p.stderr and 'run.sh --restart replaces it' in p.stderr
  assert 'deit_s is running' in launch('run.sh', *V5E, '--ensure', FAKE_SSH_EXEC='1').stdout
  p = launch('setup.sh', *V5E, '--force', ok=False, FAKE_SSH_EXEC='1')
  assert 'a run is active' in p.stderr
  p = launch('run.sh', *V5E, '--restart', FAKE_SSH_EXEC='1', FAKE_TRAIN_SLEEP='0')
  assert 'stopping the active run' in p.stdout and 'started deit_s' in p.stdout
  assert int(pid_file.read_text()) != first
  assert not _alive(first)  # the old run is stopped


def test_worker_refuses_another_ref(launch, repo):
  _setup_and_run(launch, V5E)
  (launch.home / 'stvit_jax' / '.launch_ref').write_text('0' * 40 + '\n')
  p = launch('run.sh', *V5E, ok=False, FAKE_SSH_EXEC='1')
  assert f'not {launch.sha}: run launch/setup.sh --ref={launch.sha} first' in p.stderr


def test_failed_run_is_restarted_by_ensure(launch):
  _setup_and_run(launch, V5E, FAKE_TRAIN_RC='3')
  status = _wait_for(launch.home / 'stvit_jax_runs' / 'deit_s' / 'status')
  assert status.read_text() == '3\n'
  p = launch('run.sh', *V5E, '--ensure', FAKE_SSH_EXEC='1')
  assert 'started deit_s' in p.stdout


# ---------------------------------------------------------------- resume

def _verbs(calls):
  return [c[4] if c[0] == 'gcloud' else c[0] for c in calls]


def test_resume_recreates_a_preempted_tpu_vm(launch):
  launch.set_state('tpu-vm', 'stvit-s', 'PREEMPTED')
  p = launch('resume.sh', *V5E, '--', '--config.batch_size=4096', FAKE_SSH_EXEC='1')
  calls = launch.calls()  # the second gsutil is a worker's download, run by the fake ssh
  assert _verbs(calls) == ['describe', 'delete', 'create', 'gsutil', 'ssh', 'gsutil', 'ssh']
  assert calls[0] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'stvit-s',
                      '--zone=us-west4-a', '--format=value(state)']
  assert calls[1] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'stvit-s',
                      '--zone=us-west4-a', '--quiet']
  assert calls[2] == CREATE_V5E
  assert 'stvit-s is PREEMPTED: deleting and re-creating it' in p.stdout
  _wait_for(launch.home / 'stvit_jax_runs' / 'deit_s' / 'status')
  argv = (launch.state / 'train.argv').read_text().split('\0')[:-1]
  assert argv[2:] == ['--config=configs/deit_s.py', '--workdir=gs://my-bucket/deit_s', '--config.compilation_cache_dir=gs://my-bucket/xla_cache', '--config.compilation_cache_min_compile_secs=1',
                      '--config.batch_size=4096']  # the same command, the same workdir
  # Ready and finished: resume only checks.
  launch.clear_calls()
  p = launch('resume.sh', *V5E, '--', '--config.batch_size=4096', FAKE_SSH_EXEC='1')
  assert _verbs(launch.calls()) == ['describe', 'gsutil', 'ssh', 'ssh']
  assert 'is already set up' in p.stdout and 'nothing to do' in p.stdout


def test_resume_recreates_a_suspended_queued_resource(launch):
  launch.set_state('queued-resources', 'stvit-v4', 'SUSPENDED')
  launch.set_state('tpu-vm', 'stvit-v4', 'PREEMPTED')
  launch('resume.sh', *V4, '--', '--config.batch_size=4096',
         FAKE_CREATE_STATES='WAITING_FOR_RESOURCES ACTIVE')
  calls = launch.calls()
  assert _verbs(calls) == ['describe', 'delete', 'create', 'describe', 'describe', 'gsutil',
                           'ssh', 'ssh']
  assert calls[0] == DESCRIBE_V4_QUEUED
  assert calls[1] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'stvit-v4',
                      '--zone=us-central2-b', '--force', '--quiet']
  assert calls[2] == CREATE_V4_QUEUED
  assert 'STVIT_JAX_INIT=1' in calls[-1][8]  # v4-32: 4 hosts
  assert '--workdir=gs://my-bucket/deit_s_v4 --config.compilation_cache_dir=gs://my-bucket/xla_cache --config.compilation_cache_min_compile_secs=1 --config.batch_size=4096\n' in calls[-1][8]


@pytest.mark.parametrize('states, verbs', [
    (None, ['describe', 'create', 'gsutil', 'ssh', 'ssh']),  # never created
    (['CREATING', 'READY'], ['describe', 'describe', 'gsutil', 'ssh', 'ssh']),  # waits
    (['READY'], ['describe', 'gsutil', 'ssh', 'ssh']),
])
def test_resume_other_states(launch, states, verbs):
  if states:
    launch.set_state('tpu-vm', 'stvit-s', *states)
  launch('resume.sh', *V5E)
  assert _verbs(launch.calls()) == verbs


def test_resume_stopped_is_an_error(launch):
  launch.set_state('tpu-vm', 'stvit-s', 'STOPPED')
  p = launch('resume.sh', *V5E, ok=False)
  assert 'stvit-s is STOPPED: start it' in p.stderr
  assert _verbs(launch.calls()) == ['describe']


def test_resume_dry_run(launch):
  p = launch('resume.sh', *V5E, '--dry-run', '--', '--config.batch_size=4096')
  assert launch.calls() == []
  launch.set_state('tpu-vm', 'stvit-s', 'PREEMPTED')
  calls = record_printed(launch, p.stdout)  # the printed commands, run against the fakes
  assert _verbs(calls) == ['describe', 'delete', 'create', 'gsutil', 'ssh', 'ssh']
  assert calls[2] == CREATE_V5E
  assert 'has finished (exit status 0); nothing to do' in p.stdout  # run.sh --ensure's script
  assert ('python -m stvit_jax.main --config=configs/deit_s.py --workdir=gs://my-bucket/deit_s --config.compilation_cache_dir=gs://my-bucket/xla_cache --config.compilation_cache_min_compile_secs=1 '
          '--config.batch_size=4096\n') in p.stdout
