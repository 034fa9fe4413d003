"""launch/ (Cloud TPU VM scripts): the exact gcloud / gsutil commands, validation, and
the scripts that run on the workers.

Each script runs from a copy of launch/ in a temporary git repository, with a fake
`gcloud` and `gsutil` first on PATH: they record their argv, keep TPU states in files
(describe prints READY, PREEMPTED, ...), and `gsutil cp` copies to a local "bucket".
With FAKE_SSH_EXEC the fake `ssh --command=SCRIPT` runs SCRIPT with bash under a
temporary HOME, against fake worker tools (python3 -> uv -> venv -> trainer), so the
worker-side shell is executed too. Needs bash and git; seconds. shellcheck runs when
installed (apt-get install -y shellcheck).
"""
import json
import os
from pathlib import Path
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / 'launch'
SCRIPTS = ['create.sh', 'setup.sh', 'run.sh', 'logs.sh', 'resume.sh', 'delete.sh']
JAX_PIN = re.search(r'"jax==([^"]+)"', (ROOT / 'pyproject.toml').read_text()).group(1)

# The README's examples: v5e-16 spot in us-west4-a, v4-32 reserved (queued resource).
V5E = ['--name=stvit-s', '--zone=us-west4-a', '--accelerator=v5litepod-16', '--spot',
       '--bucket=gs://my-bucket', '--run=deit_s', '--config=configs/deit_s.py']
V4 = ['--name=stvit-v4', '--zone=us-central2-b', '--accelerator=v4-32', '--reserved',
      '--queued', '--bucket=gs://my-bucket', '--run=deit_s_v4', '--config=configs/deit_s.py']

FAKE_GCLOUD = r'''
import json, os, shutil, subprocess, sys

prog, args = os.path.basename(sys.argv[0]), sys.argv[1:]
state = os.environ['FAKE_STATE']
with open(os.path.join(state, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps([prog] + args) + '\n')


def gcs(url):
  return os.path.join(state, 'gcs', url[len('gs://'):]) if url.startswith('gs://') else url


if prog == 'gsutil':  # gsutil [-q] cp SRC DST
  src, dst = [a for a in args if not a.startswith('-')][1:]
  os.makedirs(os.path.dirname(gcs(dst)), exist_ok=True)
  shutil.copyfile(gcs(src), gcs(dst))
  sys.exit(0)

kind, verb, name = args[2:5]  # gcloud compute tpus KIND VERB NAME --flag=value...
flags = dict(a.split('=', 1) for a in args[5:] if '=' in a)
path = lambda k: os.path.join(state, f'{k}.{name}')
if os.environ.get('FAKE_FAIL') == verb:
  sys.exit(f'ERROR: (gcloud.compute.tpus.{kind}.{verb}) PERMISSION_DENIED: fake failure')
if verb != 'create' and not os.path.exists(path('tpu-vm' if verb == 'ssh' else kind)):
  sys.exit(f"ERROR: (gcloud.compute.tpus.{kind}.{verb}) NOT_FOUND: Resource "
           f"'projects/p/locations/{flags['--zone']}/nodes/{name}' was not found")
if verb == 'create':
  states = os.environ.get('FAKE_CREATE_STATES', 'ACTIVE' if kind == 'queued-resources' else 'READY')
  open(path(kind), 'w').write(states)
  open(path('tpu-vm'), 'w').write('READY')
  print(f'Create request issued for: [{name}]')
elif verb == 'describe':  # the states queued in the file, one per call; the last one stays
  states = open(path(kind)).read().split()
  print(states[0])
  open(path(kind), 'w').write(' '.join(states[1:] or states))
elif verb == 'delete':
  os.remove(path(kind))
  if os.path.exists(path('tpu-vm')):
    os.remove(path('tpu-vm'))
  print(f'Deleted [{name}].')
elif verb == 'ssh' and os.environ.get('FAKE_SSH_EXEC'):
  env = dict(os.environ, PATH=os.environ['FAKE_WORKER_PATH'] + os.pathsep + os.environ['PATH'])
  sys.exit(subprocess.run(['bash', '-c', flags['--command']], env=env).returncode)
elif verb == 'ssh':
  print(f"fake ssh {name} --worker={flags['--worker']}")
else:
  sys.exit(f'fake gcloud: unexpected {args}')
'''

# Worker-side fakes: the image's python3 (installs uv), uv (venv, pip), the trainer.
FAKE_PYTHON3 = r'''#!/usr/bin/env bash
echo "python3 $*" >> "$FAKE_STATE/worker.log"
mkdir -p "$HOME/.local/bin" && cp "$FAKE_WORKER_PATH/fake-uv" "$HOME/.local/bin/uv"
'''
FAKE_UV = r'''#!/usr/bin/env bash
echo "uv $*" >> "$FAKE_STATE/worker.log"
if [ "$1" = venv ]; then
  venv="${*: -1}"
  mkdir -p "$venv/bin" && cp "$FAKE_WORKER_PATH/fake-trainer" "$venv/bin/python"
  echo "PATH=\"$venv/bin:\$PATH\"" > "$venv/bin/activate"
elif [ "$2" = list ]; then
  printf 'jax 0.10.2\njaxlib 0.10.2\nlibtpu 0.0.42\nstvit-jax 0.1.0\n'
fi
'''
FAKE_TRAINER = r'''#!/usr/bin/env bash
printf '%s\0' "$@" > "$FAKE_STATE/train.argv"
printf 'cwd=%s\nSTVIT_JAX_INIT=%s\nTFDS_DATA_DIR=%s\n' "$PWD" "${STVIT_JAX_INIT-}" \
  "${TFDS_DATA_DIR-}" > "$FAKE_STATE/train.env"
echo "fake trainer $$"
sleep "${FAKE_TRAIN_SLEEP:-0}"
exit "${FAKE_TRAIN_RC:-0}"
'''


def _write_exe(path, text):
  path.write_text(text)
  path.chmod(0o755)


def _git(cwd, *args):
  return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=cwd,
                        check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope='module')
def repo(tmp_path_factory):
  """A git repository holding launch/, pyproject.toml and a config: (root, commit)."""
  root = tmp_path_factory.mktemp('repo')
  shutil.copytree(LAUNCH, root / 'launch', ignore=shutil.ignore_patterns('*.md'))
  shutil.copy(ROOT / 'pyproject.toml', root / 'pyproject.toml')
  (root / 'configs').mkdir()
  (root / 'configs' / 'deit_s.py').write_text('def get_config(arg=None):\n  pass\n')
  _git(root, 'init', '-q')
  _git(root, 'add', '.')
  _git(root, 'commit', '-qm', 'init')
  return root, _git(root, 'rev-parse', 'HEAD')


@pytest.fixture(scope='module')
def fakebin(tmp_path_factory):
  d = tmp_path_factory.mktemp('fakebin')
  (d / 'bin').mkdir()
  for prog in ('gcloud', 'gsutil'):
    _write_exe(d / 'bin' / prog, f'#!{sys.executable}\n{FAKE_GCLOUD}')
  (d / 'worker').mkdir()
  _write_exe(d / 'worker' / 'python3', FAKE_PYTHON3)
  _write_exe(d / 'worker' / 'fake-uv', FAKE_UV)
  _write_exe(d / 'worker' / 'fake-trainer', FAKE_TRAINER)
  return d


class Launcher:
  """Runs launch/ scripts of `repo` against the fakes; records what they called."""

  def __init__(self, repo, fakebin, tmp_path):
    self.root, self.sha = repo
    self.state = tmp_path / 'state'
    self.state.mkdir()
    self.home = tmp_path / 'home'
    self.home.mkdir()
    self.tmpdir = tmp_path / 'tmp'
    self.tmpdir.mkdir()
    self.env = {
        'PATH': f'{fakebin / "bin"}{os.pathsep}{os.environ["PATH"]}',
        'HOME': str(self.home), 'TMPDIR': str(self.tmpdir), 'LC_ALL': 'C.UTF-8',
        'FAKE_STATE': str(self.state), 'FAKE_WORKER_PATH': str(fakebin / 'worker'),
        'STVIT_LAUNCH_POLL_S': '0',
    }

  def __call__(self, script, *args, ok=True, **env):
    p = subprocess.run(['bash', str(self.root / 'launch' / script), *args], capture_output=True,
                       text=True, env={**self.env, **env}, timeout=60)
    if ok is not None:
      assert (p.returncode == 0) == ok, f'rc={p.returncode}\n{p.stdout}\n{p.stderr}'
    return p

  def calls(self):
    f = self.state / 'calls.jsonl'
    return [json.loads(l) for l in f.read_text().splitlines()] if f.exists() else []

  def clear_calls(self):
    (self.state / 'calls.jsonl').unlink(missing_ok=True)

  def set_state(self, kind, name, *states):
    (self.state / f'{kind}.{name}').write_text(' '.join(states))

  def exists(self, kind, name):
    return (self.state / f'{kind}.{name}').exists()


@pytest.fixture
def launch(repo, fakebin, tmp_path):
  launcher = Launcher(repo, fakebin, tmp_path)
  yield launcher
  for pid_file in launcher.home.glob('stvit_jax_runs/*/pid'):  # runs these tests started
    try:
      os.killpg(int(pid_file.read_text()), 9)
    except (ProcessLookupError, ValueError):
      pass


def ssh(name, zone, worker, command):
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', name, f'--zone={zone}',
          f'--worker={worker}', f'--command={command}']


def record_printed(launch, stdout):
  """Runs the printed dry-run script against the fakes: the calls it makes."""
  launch.clear_calls()
  p = subprocess.run(['bash', '-c', stdout], capture_output=True, text=True, env=launch.env,
                     timeout=60)
  assert p.returncode == 0, p.stderr
  return launch.calls()


# ---------------------------------------------------------------- the scripts themselves

def test_scripts_are_executable_strict_and_quoted():
  for script in SCRIPTS:
    text = (LAUNCH / script).read_text()
    assert text.startswith('#!/usr/bin/env bash\n'), script
    assert '\nset -euo pipefail\n' in text, script
    assert os.access(LAUNCH / script, os.X_OK), f'{script} is not executable (chmod +x)'
  assert (LAUNCH / 'README.md').exists()


@pytest.mark.skipif(shutil.which('shellcheck') is None,
                    reason='shellcheck not installed (apt-get install -y shellcheck)')
def test_shellcheck():
  p = subprocess.run(['shellcheck', '-x', 'common.sh', *SCRIPTS], cwd=LAUNCH,
                     capture_output=True, text=True)
  assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize('script', SCRIPTS)
def test_help(launch, script):
  p = launch(script, '--help')
  assert p.stdout.startswith(f'Usage: launch/{script}') and '--dry-run' in p.stdout
  assert launch.calls() == []


# ---------------------------------------------------------------- create / delete

CREATE_V5E = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'stvit-s', '--zone=us-west4-a',
              '--accelerator-type=v5litepod-16', '--version=v2-alpha-tpuv5-lite', '--spot']
CREATE_V4_QUEUED = ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'stvit-v4',
                    '--zone=us-central2-b', '--node-id=stvit-v4', '--accelerator-type=v4-32',
                    '--runtime-version=tpu-ubuntu2204-base', '--reserved']
DESCRIBE_V4_QUEUED = ['gcloud', 'compute', 'tpus', 'queued-resources', 'describe', 'stvit-v4',
                      '--zone=us-central2-b', '--format=value(state.state)']


def test_create_dry_run_prints_and_calls_nothing(launch):
  p = launch('create.sh', *V5E, '--dry-run')
  assert launch.calls() == []
  assert p.stdout.splitlines() == [
      '# create stvit-s: v5litepod-16 (4 worker(s)) in us-west4-a, spot',
      'gcloud compute tpus tpu-vm create stvit-s --zone=us-west4-a '
      '--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite --spot']
  assert record_printed(launch, p.stdout) == [CREATE_V5E]  # the printed text is the command


@pytest.mark.parametrize('flags, accel, zone, extra', [
    (['--spot'], 'v5litepod-16', 'us-west4-a', ['--version=v2-alpha-tpuv5-lite', '--spot']),
    (['--reserved'], 'v4-32', 'us-central2-b', ['--version=tpu-ubuntu2204-base', '--reserved']),
    ([], 'v5p-8', 'us-east5-a', ['--version=v2-alpha-tpuv5']),
    (['--spot', '--project=my-proj-1', '--runtime-version=v2-alpha-tpuv6e'], 'v6e-8',
     'europe-west4-a', ['--version=v2-alpha-tpuv6e', '--spot']),
])
def test_create_tpu_vm(launch, flags, accel, zone, extra):
  p = launch('create.sh', '--name=n1', f'--zone={zone}', f'--accelerator={accel}', *flags)
  project = [f for f in flags if f.startswith('--project')]
  want = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'n1', f'--zone={zone}', *project,
          f'--accelerator-type={accel}', *extra]
  assert launch.calls() == [want]
  assert '+ gcloud compute tpus tpu-vm create n1' in p.stdout  # normal mode prints it too


def test_create_queued_waits_until_active(launch):
  p = launch('create.sh', *V4, FAKE_CREATE_STATES='ACCEPTED WAITING_FOR_RESOURCES ACTIVE')
  assert launch.calls() == [CREATE_V4_QUEUED] + [DESCRIBE_V4_QUEUED] * 3
  assert '# stvit-v4 is WAITING_FOR_RESOURCES' in p.stdout and '# stvit-v4 is ACTIVE' in p.stdout
  dry = launch('create.sh', *V4, '--dry-run').stdout
  assert record_printed(launch, dry) == [CREATE_V4_QUEUED, DESCRIBE_V4_QUEUED]


def test_create_queued_spot_no_wait(launch):
  args = [a for a in V4 if a != '--reserved'] + ['--spot', '--no-wait']
  launch('create.sh', *args)
  assert launch.calls() == [CREATE_V4_QUEUED[:-1] + ['--spot']]


def test_create_queued_that_fails_is_an_error(launch):
  p = launch('create.sh', *V4, ok=False, FAKE_CREATE_STATES='PROVISIONING FAILED')
  assert p.returncode != 0 and 'stvit-v4 is FAILED while waiting for ACTIVE' in p.stderr


def test_gcloud_failure_propagates(launch):
  p = launch('create.sh', *V5E, ok=False, FAKE_FAIL='create')
  assert p.returncode != 0 and 'PERMISSION_DENIED' in p.stderr


def test_delete(launch):
  launch.set_state('tpu-vm', 'stvit-s', 'READY')
  launch('delete.sh', *V5E)
  launch.set_state('queued-resources', 'stvit-v4', 'ACTIVE')
  launch('delete.sh', *V4)
  assert launch.calls() == [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'stvit-s', '--zone=us-west4-a', '--quiet'],
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'stvit-v4',
       '--zone=us-central2-b', '--force', '--quiet']]
  assert not launch.exists('tpu-vm', 'stvit-s') and not launch.exists('tpu-vm', 'stvit-v4')
  assert launch('delete.sh', *V5E, '--dry-run').stdout == (
      'gcloud compute tpus tpu-vm delete stvit-s --zone=us-west4-a --quiet\n')


# ---------------------------------------------------------------- setup / run / logs

def test_setup_commands(launch):
  launch.set_state('tpu-vm', 'stvit-s', 'READY')
  p = launch('setup.sh', *V5E)
  sha, tarball = launch.sha, f'{launch.tmpdir}/stvit_jax-{launch.sha}.tar.gz'
  staged = f'gs://my-bucket/launch/src/stvit_jax-{sha}.tar.gz'
  calls = launch.calls()
  assert calls[0] == ['gsutil', '-q', 'cp', tarball, staged]
  assert calls[1][:8] == ssh('stvit-s', 'us-west4-a', 'all', '')[:8]
  assert len(calls) == 2
  remote = calls[1][8][len('--command='):]
  assert f'ref={sha}\n' in remote
  assert f'gsutil -q cp {staged} "/tmp/stvit_jax-$ref.tar.gz"' in remote
  assert 'python3 -m pip install --user --quiet uv==' in remote
  assert '"$uv" venv --quiet --seed --python 3.11 "$venv"' in remote
  assert f'-e "$src" "jax[tpu]=={JAX_PIN}"' in remote
  assert f'+ git -C {launch.root} archive --format=tar.gz --output={tarball} {sha}' in p.stdout
  assert (launch.state / 'gcs' / 'my-bucket' / 'launch' / 'src' / f'stvit_jax-{sha}.tar.gz').exists()
  dry = launch('setup.sh', *V5E, '--dry-run').stdout
  assert record_printed(launch, dry) == calls


def _run_ssh(launch, args, *overrides, **env):
  launch.clear_calls()
  p = launch('run.sh', *args, *overrides, **env)
  (call,) = [c for c in launch.calls() if c[4] == 'ssh']
  return p, call


def test_run_command_on_all_workers(launch):
  launch.set_state('tpu-vm', 'stvit-s', 'READY')
  p, call = _run_ssh(launch, V5E + ['--env=TFDS_DATA_DIR=gs://my-bucket/tfds'], '--',
                     '--config.batch_size=4096', '--config.model.dtype=bfloat16')
  assert call[:8] == ssh('stvit-s', 'us-west4-a', 'all', '')[:8]
  remote = call[8][len('--command='):]
  assert ('python -m stvit_jax.main --config=configs/deit_s.py --workdir=gs://my-bucket/deit_s '
          '--config.batch_size=4096 --config.model.dtype=bfloat16\n') in remote
  assert 'export STVIT_JAX_INIT=1\n' in remote  # v5litepod-16: 4 hosts
  assert 'export TFDS_DATA_DIR=gs://my-bucket/tfds\n' in remote
  assert f'ref={launch.sha}\n' in remote and 'setsid nohup bash "$dir/run.sh"' in remote
  assert "'" not in remote  # prints cleanly inside --command='...'
  assert '# run deit_s on 4 worker(s) of stvit-s' in p.stdout
  dry = launch('run.sh', *V5E, '--env=TFDS_DATA_DIR=gs://my-bucket/tfds', '--dry-run', '--',
               '--config.batch_size=4096', '--config.model.dtype=bfloat16').stdout
  assert record_printed(launch, dry) == [call]


def test_run_single_host_has_no_distributed_init(launch):
  args = ['--name=one', '--zone=us-west4-a', '--accelerator=v5litepod-8', '--bucket=gs://b-1',
          '--config=configs/deit_s.py:baseline']
  launch.set_state('tpu-vm', 'one', 'READY')
  _, call = _run_ssh(launch, args)
  assert 'STVIT_JAX_INIT' not in call[8]
  assert ('python -m stvit_jax.main --config=configs/deit_s.py:baseline --workdir=gs://b-1/one\n'
          in call[8])  # --run defaults to --name


def test_run_follow_and_logs(launch):
  launch.set_state('tpu-vm', 'stvit-s', 'READY')
  launch('run.sh', *V5E, '--follow')
  tail = 'tail -n 100 -F "$HOME/stvit_jax_runs/deit_s/log"'
  assert launch.calls()[-1] == ssh('stvit-s', 'us-west4-a', 0, tail)
  launch.clear_calls()
  launch('logs.sh', *V5E)
  launch('logs.sh', *V5E, '--worker=all', '--lines=20', '--no-follow')
  assert launch.calls() == [
      ssh('stvit-s', 'us-west4-a', 0, tail),
      ssh('stvit-s', 'us-west4-a', 'all', 'tail -n 20 "$HOME/stvit_jax_runs/deit_s/log"')]
  assert launch('logs.sh', *V5E, '--dry-run').stdout == (
      "gcloud compute tpus tpu-vm ssh stvit-s --zone=us-west4-a --worker=0 "
      f"--command='{tail}'\n")


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
                  '--workdir=gs://my-bucket/deit_s', *odd]  # every character arrives
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
  assert argv[2:] == ['--config=configs/deit_s.py', '--workdir=gs://my-bucket/deit_s',
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
  assert '--workdir=gs://my-bucket/deit_s_v4 --config.batch_size=4096\n' in calls[-1][8]


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
  assert ('python -m stvit_jax.main --config=configs/deit_s.py --workdir=gs://my-bucket/deit_s '
          '--config.batch_size=4096\n') in p.stdout


# ---------------------------------------------------------------- bad arguments

@pytest.mark.parametrize('script, args, message', [
    ('create.sh', ['--name=n', '--zone=us-west4', '--accelerator=v5litepod-16'],
     '--zone=us-west4: not a zone name; expected REGION-ZONE such as us-west4-a'),
    ('create.sh', ['--name=n', '--zone=us-west4-a', '--accelerator=v4-32'],
     '--zone=us-west4-a does not offer TPU v4 (--accelerator=v4-32); v4 zones: us-central2-b'),
    ('create.sh', ['--name=n', '--zone=us-west4-a', '--accelerator=v5e-16'],
     'TPU v5e types are named v5litepod-N (N chips in 1 4 8 16 32 64 128 256), e.g. v5litepod-16'),
    ('create.sh', ['--name=n', '--zone=us-central2-b', '--accelerator=v4-12'],
     '--accelerator=v4-12: v4-N takes N (TensorCores, 2 per chip) a multiple of 8'),
    ('create.sh', ['--name=n', '--zone=us-east1-d', '--accelerator=v6e-2'],
     '--accelerator=v6e-2: v6e-N takes N (chips) in: 1 4 8 16 32 64 128 256'),
    ('create.sh', ['--name=n', '--zone=us-central1-a', '--accelerator=v3-8'],
     '--accelerator=v3-8: not a TPU type this launcher knows; valid: v4-N, v5p-N'),
    ('create.sh', ['--name=n', '--zone=us-west4-a'], '--accelerator is required'),
    ('create.sh', ['--zone=us-west4-a', '--accelerator=v5litepod-8'], '--name is required'),
    ('create.sh', ['--name=My_TPU', '--zone=us-west4-a', '--accelerator=v5litepod-8'],
     '--name=My_TPU: a TPU name is 1-63 lowercase letters'),
    ('create.sh', ['--name=n', '--zone=us-west4-a', '--accelerator=v5litepod-8', '--spot',
                   '--reserved'], '--spot and --reserved exclude each other'),
    ('create.sh', ['--name=n', '--zone=us-west4-a', '--accelerator=v5litepod-8', '--follow'],
     '--follow is not a flag of launch/create.sh'),
    ('create.sh', ['--name=n', '--zone=us-west4-a', '--accelerator=v5litepod-8', '--bogus'],
     'unknown flag --bogus'),
    ('create.sh', ['--name=n', '--zone=us-west4-a', '--accelerator=v5litepod-8', '--',
                   '--config.x=1'], 'launch/create.sh takes no trainer overrides'),
    ('create.sh', ['--name=n', '--zone=us-west4-a', '--accelerator=v5litepod-8', '--project=P'],
     '--project=P: a project ID is 6-30 lowercase letters'),
    ('delete.sh', ['--name=n', '--zone=mars-north1-a'], '--zone=mars-north1-a is not a known TPU zone'),
    ('delete.sh', ['--name=n', '--zone'], '--zone needs a value'),
    ('setup.sh', ['--name=n', '--zone=us-west4-a', '--bucket=my-bucket'],
     '--bucket=my-bucket: expected gs://NAME'),
    ('setup.sh', ['--name=n', '--zone=us-west4-a', '--bucket=gs://My_Bucket'],
     '--bucket=gs://My_Bucket: a bucket name is 3-63 lowercase letters'),
    ('setup.sh', ['--name=n', '--zone=us-west4-a', '--bucket=gs://b-1/runs'],
     'give the bucket alone, gs://b-1; the path inside it is --run'),
    ('setup.sh', ['--name=n', '--zone=us-west4-a'], '--bucket is required'),
    ('setup.sh', ['--name=n', '--zone=us-west4-a', '--bucket=gs://b-1', '--ref=nope'],
     '--ref=nope: not a commit of the checkout'),
    ('run.sh', V5E[:-1] + ['--run=a/b', '--config=configs/deit_s.py'],
     '--run=a/b: a run name is 1-100 letters'),
    ('run.sh', V5E[:-1] + ['--config=configs/nope.py'],
     '--config=configs/nope.py: configs/nope.py is not in commit'),
    ('run.sh', V5E[:-1] + ['--config=deit_s.py'], '--config=deit_s.py: expected configs/FILE.py'),
    ('run.sh', V5E[:-1], '--config is required'),
    ('run.sh', V5E + ['--', '--batch_size=4'],
     'trainer override --batch_size=4: expected --config.a.b=value'),
    ('run.sh', V5E + ['--', '--workdir=gs://x/y'],
     '--workdir comes from --bucket/--run'),
    ('run.sh', V5E + ['--env=1X=2'], '--env=1X=2: expected KEY=VALUE'),
    ('run.sh', V5E + ['--restart', '--ensure'], '--restart and --ensure exclude each other'),
    ('logs.sh', ['--name=n', '--zone=us-west4-a', '--worker=first'],
     '--worker=first: expected a worker number'),
    ('resume.sh', V5E[:2], '--accelerator is required'),
])
@pytest.mark.parametrize('dry_run', [False, True])
def test_bad_arguments(launch, script, args, message, dry_run):
  p = launch(script, *args, *(['--dry-run'] if dry_run and '--' not in args else []), ok=False)
  assert p.returncode == 2, p.stdout + p.stderr
  assert p.stderr.startswith(f'launch/{script}: error: ') and message in p.stderr, p.stderr
  assert launch.calls() == [] and p.stdout == ''


def test_skip_zone_check_accepts_a_new_zone(launch):
  p = launch('create.sh', '--name=n', '--zone=us-central1-ai1a', '--accelerator=v6e-8',
             '--skip-zone-check', '--dry-run')
  assert '--zone=us-central1-ai1a' in p.stdout


# ---------------------------------------------------------------- the README's commands

README_EXAMPLES = {  # the ARGS arrays of launch/README.md, with OVERRIDES
    'v5e': V5E[:5] + ['--run=stvit_deit_s', '--config=configs/deit_s.py',
                      '--env=TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets'],
    'v4': V4[:6] + ['--run=stvit_deit_s_v4', '--config=configs/deit_s.py',
                    '--env=TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets'],
}


def _commands_in(text):
  """Each gcloud / gsutil / git command of a shell text (multi-line ones whole)."""
  commands, current = [], None
  for line in text.splitlines():
    if current is None and re.match(r'(gcloud|gsutil|git -C) ', line):
      current = line
    elif current is not None:
      current += '\n' + line
    if current is not None and current.count("'") % 2 == 0:
      commands.append(current)
      current = None
  return commands


def _readme_commands():
  blocks = re.findall(r'```bash\n(.*?)```', (LAUNCH / 'README.md').read_text(), re.S)
  return _commands_in('\n'.join(blocks))


def test_readme_commands_are_what_the_scripts_print(launch):
  printed = ''
  for args in README_EXAMPLES.values():
    for script in SCRIPTS:
      overrides = ['--', '--config.batch_size=1024'] if script in ('run.sh', 'resume.sh') else []
      printed += launch(script, *args, '--dry-run', *overrides, TMPDIR='/tmp').stdout
  printed = printed.replace(launch.sha, 'SHA').replace(str(launch.root), '/path/to/stvit_jax')
  commands = _readme_commands()
  assert len(commands) >= 14
  for command in commands:
    assert command in printed, command


@pytest.mark.skipif(shutil.which('gcloud') is None, reason='the Cloud SDK is not installed')
def test_real_gcloud_parses_every_command(launch, tmp_path):
  """The installed gcloud accepts each command's flags: with no account configured it
  stops at authentication, after parsing (a bad flag fails first, naming the flag)."""
  printed = ''
  for args in (V5E, V4):
    for script in ('create.sh', 'logs.sh', 'run.sh', 'resume.sh', 'delete.sh'):
      printed += launch(script, *args, '--dry-run').stdout
  commands = {}
  for command in _commands_in(printed):
    argv = shlex.split(command)
    if argv[0] == 'gcloud':
      commands.setdefault((*argv[:5], *(a.split('=')[0] for a in argv[6:])), argv)
  assert len(commands) == 7  # create, describe, delete (tpu-vm, queued-resources), ssh
  env = {'PATH': os.environ['PATH'], 'HOME': str(tmp_path), 'CLOUDSDK_CONFIG': str(tmp_path),
         'CLOUDSDK_CORE_PROJECT': 'my-project-123', 'CLOUDSDK_CORE_DISABLE_PROMPTS': '1',
         'CLOUDSDK_CORE_CHECK_GCE_METADATA': 'false',
         'CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK': '1'}
  for argv in commands.values():
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode != 0 and 'account' in p.stderr, (argv[:5], p.stderr)
