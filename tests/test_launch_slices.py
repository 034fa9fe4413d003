"""launch/ with --num_slices (Cloud TPU Multislice): one queued resource of N slices, whose
nodes NAME-0 .. NAME-(N-1) each get the per-slice ssh commands. The exact gcloud commands
(dry-run and against the fakes of launch_harness.py), their flags against the reference
table, the worker side executed on two nodes, resume, and bad --num_slices.
"""
import os
import re
import shlex
import shutil
import subprocess

import pytest

from launch_harness import SCRIPTS, SLICES, V4, V5E, record_printed, ssh
from test_launch import _commands_in

ZONE = 'us-west4-a'
NODES = ['stvit-m-0', 'stvit-m-1']
CREATE = ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'stvit-m', f'--zone={ZONE}',
          '--node-count=2', '--node-prefix=stvit-m', '--accelerator-type=v5litepod-16',
          '--runtime-version=v2-alpha-tpuv5-lite', '--spot']
DESCRIBE = ['gcloud', 'compute', 'tpus', 'queued-resources', 'describe', 'stvit-m',
            f'--zone={ZONE}', '--format=value(state.state)']
DELETE = ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'stvit-m', f'--zone={ZONE}',
          '--force', '--quiet']
TAIL = 'tail -n 100 -F "$HOME/stvit_jax_runs/deit_m/log"'


def _ssh_calls(launch):
  return [c for c in launch.calls() if c[4] == 'ssh']


def _verbs(calls):
  return [c[4] if c[0] == 'gcloud' else c[0] for c in calls]


# ---------------------------------------------------------------- create / delete

def test_create_two_slices(launch):
  p = launch('create.sh', *SLICES, '--dry-run')
  assert launch.calls() == []
  assert p.stdout.splitlines() == [
      '# create stvit-m: 2 slices of v5litepod-16 (4 worker(s) each) in us-west4-a, spot, '
      'queued resource; nodes stvit-m-0 .. stvit-m-1',
      'gcloud compute tpus queued-resources create stvit-m --zone=us-west4-a --node-count=2 '
      '--node-prefix=stvit-m --accelerator-type=v5litepod-16 '
      '--runtime-version=v2-alpha-tpuv5-lite --spot',
      '# wait: repeated every 0s until the state is ACTIVE',  # STVIT_LAUNCH_POLL_S=0
      "gcloud compute tpus queued-resources describe stvit-m --zone=us-west4-a "
      "--format='value(state.state)'"]
  assert record_printed(launch, p.stdout) == [CREATE, DESCRIBE]
  launch.clear_calls()
  launch('create.sh', *SLICES, FAKE_CREATE_STATES='PROVISIONING ACTIVE')
  assert launch.calls() == [CREATE, DESCRIBE, DESCRIBE]
  assert all(launch.exists('tpu-vm', n) for n in NODES) and not launch.exists('tpu-vm', 'stvit-m')


def test_one_slice_is_todays_commands(launch):
  """--num_slices=1 (the default, given) changes no command of any script."""
  for args in (V5E, V4):
    for script in SCRIPTS:
      overrides = ['--', '--config.batch_size=8'] if script in ('run.sh', 'resume.sh') else []
      today = launch(script, *args, '--dry-run', *overrides).stdout
      assert launch(script, *args, '--num_slices=1', '--dry-run', *overrides).stdout == today


def test_delete_two_slices(launch):
  p = launch('delete.sh', *SLICES, '--dry-run')
  assert p.stdout == ('# delete stvit-m with its 2 nodes stvit-m-0 .. stvit-m-1\n'
                      'gcloud compute tpus queued-resources delete stvit-m --zone=us-west4-a '
                      '--force --quiet\n')
  launch('create.sh', *SLICES)
  launch.clear_calls()
  launch('delete.sh', *SLICES)
  assert launch.calls() == [DELETE]
  assert not any(launch.exists('tpu-vm', n) for n in NODES)  # --force took the nodes along


# ---------------------------------------------------------------- setup / run / logs

def test_setup_every_worker_of_every_slice(launch):
  launch('create.sh', *SLICES)
  launch.clear_calls()
  launch('setup.sh', *SLICES)
  calls = launch.calls()
  assert _verbs(calls) == ['gsutil', 'ssh', 'ssh']
  assert [c[:8] for c in calls[1:]] == [ssh(n, ZONE, 'all', '')[:8] for n in NODES]
  assert calls[1][8] == calls[2][8]  # the same install on each slice
  dry = launch('setup.sh', *SLICES, '--dry-run').stdout
  assert record_printed(launch, dry) == calls


def test_run_every_worker_of_every_slice(launch):
  launch('create.sh', *SLICES)
  launch.clear_calls()
  p = launch('run.sh', *SLICES, '--follow', '--', '--config.batch_size=4096')
  calls = launch.calls()
  assert [c[:8] for c in calls] == [ssh(n, ZONE, 'all', '')[:8] for n in NODES] + [
      ssh('stvit-m-0', ZONE, 0, '')[:8]]  # --follow: worker 0 of slice 0 (process 0)
  assert calls[2] == ssh('stvit-m-0', ZONE, 0, TAIL)
  for call in calls[:2]:
    remote = call[8][len('--command='):]
    assert ('python -m stvit_jax.main --config=configs/deit_s.py --workdir=gs://my-bucket/deit_m --config.compilation_cache_dir=gs://my-bucket/xla_cache --config.compilation_cache_min_compile_secs=1 '
            '--config.mesh.dcn_data=2 --config.batch_size=4096\n') in remote
    assert 'export STVIT_JAX_INIT=1\n' in remote and 'MEGASCALE' not in remote
  assert calls[0][8] == calls[1][8]
  assert ('# run deit_m on 2 slices x 4 worker(s) of stvit-m, nodes stvit-m-0 .. stvit-m-1'
          in p.stdout)
  dry = launch('run.sh', *SLICES, '--follow', '--dry-run', '--', '--config.batch_size=4096').stdout
  assert record_printed(launch, dry) == calls


def test_run_single_host_slices_still_initialize(launch):
  """Two one-host slices are two processes: jax.distributed.initialize() is needed."""
  args = [a.replace('v5litepod-16', 'v5litepod-8') for a in SLICES]
  launch('create.sh', *args)
  launch.clear_calls()
  launch('run.sh', *args)
  assert all('export STVIT_JAX_INIT=1\n' in c[8] for c in _ssh_calls(launch))


def test_logs_two_slices(launch):
  launch('create.sh', *SLICES)
  launch.clear_calls()
  launch('logs.sh', *SLICES)
  launch('logs.sh', *SLICES, '--slice=1', '--worker=2', '--lines=5')
  launch('logs.sh', *SLICES, '--worker=all', '--no-follow')
  launch('logs.sh', *SLICES, '--worker=all')
  once = 'tail -n 100 "$HOME/stvit_jax_runs/deit_m/log"'
  assert launch.calls() == [
      ssh('stvit-m-0', ZONE, 0, TAIL),
      ssh('stvit-m-1', ZONE, 2, 'tail -n 5 -F "$HOME/stvit_jax_runs/deit_m/log"'),
      ssh('stvit-m-0', ZONE, 'all', once), ssh('stvit-m-1', ZONE, 'all', once),
      # following every slice: one ssh that reaches all nodes at once
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'ssh', 'stvit-m', f'--zone={ZONE}',
       '--node=all', '--worker=all', f'--command={TAIL}']]
  assert launch('logs.sh', *SLICES, '--worker=all', '--dry-run').stdout == (
      'gcloud compute tpus queued-resources ssh stvit-m --zone=us-west4-a --node=all '
      f"--worker=all --command='{TAIL}'\n")


def test_worker_side_on_two_slices(launch):
  """setup + run executed on both nodes (each its own HOME): both train, with the slices."""
  launch('create.sh', *SLICES)
  env = {'FAKE_SSH_EXEC': '1', 'FAKE_NODE_HOMES': '1'}
  launch('setup.sh', *SLICES, **env)
  p = launch('run.sh', *SLICES, **env)
  assert len(re.findall(r'started deit_m \(pid \d+\)', p.stdout)) == 2  # once per slice
  for n in NODES:
    home = launch.home / 'nodes' / n
    assert (home / 'stvit_jax' / '.launch_ref').read_text() == launch.sha + '\n'
    status = home / 'stvit_jax_runs' / 'deit_m' / 'status'
    for _ in range(400):
      if status.exists() and status.read_text().endswith('\n'):
        break
      subprocess.run(['sleep', '0.05'], check=True)
    assert status.read_text() == '0\n', n
  argv = (launch.state / 'train.argv').read_text().split('\0')[:-1]
  assert argv[2:] == ['--config=configs/deit_s.py', '--workdir=gs://my-bucket/deit_m', '--config.compilation_cache_dir=gs://my-bucket/xla_cache', '--config.compilation_cache_min_compile_secs=1',
                      '--config.mesh.dcn_data=2']
  assert 'STVIT_JAX_INIT=1\n' in (launch.state / 'train.env').read_text()
  # Both finished with status 0: --ensure leaves each slice alone.
  p = launch('run.sh', *SLICES, '--ensure', **env)
  done = re.findall(r'(?m)^\S+: deit_m has finished \(exit status 0\); nothing to do', p.stdout)
  assert len(done) == 2


# ---------------------------------------------------------------- resume --ensure

def test_resume_recreates_a_suspended_multislice(launch):
  launch('create.sh', *SLICES)
  launch.set_state('queued-resources', 'stvit-m', 'SUSPENDED')
  launch.clear_calls()
  launch('resume.sh', *SLICES, '--', '--config.batch_size=4096',
         FAKE_CREATE_STATES='WAITING_FOR_RESOURCES ACTIVE')
  calls = launch.calls()
  assert _verbs(calls) == ['describe', 'delete', 'create', 'describe', 'describe', 'gsutil',
                           'ssh', 'ssh', 'ssh', 'ssh']
  assert calls[:3] == [DESCRIBE, DELETE, CREATE]
  assert [c[5] for c in calls[6:]] == NODES * 2  # setup on each slice, then run --ensure
  assert all(c[7] == '--worker=all' for c in calls[6:])
  assert all('--config.mesh.dcn_data=2 --config.batch_size=4096\n' in c[8] for c in calls[8:])
  assert all('has finished (exit status 0); nothing to do' in c[8] for c in calls[8:])  # --ensure
  launch.clear_calls()
  launch('resume.sh', *SLICES)  # ACTIVE: only setup (a no-op where installed) + run --ensure
  assert _verbs(launch.calls()) == ['describe', 'gsutil', 'ssh', 'ssh', 'ssh', 'ssh']


def test_resume_dry_run_two_slices(launch):
  p = launch('resume.sh', *SLICES, '--dry-run', '--', '--config.batch_size=4096')
  assert launch.calls() == []
  launch('create.sh', *SLICES)
  launch.set_state('queued-resources', 'stvit-m', 'SUSPENDED')
  calls = record_printed(launch, p.stdout)
  assert _verbs(calls) == ['describe', 'delete', 'create', 'describe', 'gsutil', 'ssh', 'ssh',
                           'ssh', 'ssh']
  assert calls[:3] == [DESCRIBE, DELETE, CREATE]
  assert [c[5] for c in calls[5:]] == NODES * 2


# ---------------------------------------------------------------- the flags, checked

def _printed_slices(launch, *arg_lists):
  printed = ''
  for args in arg_lists:
    for script in SCRIPTS:
      printed += launch(script, *args, '--dry-run').stdout
    for extra in (['--worker=all'], ['--worker=all', '--no-follow'], ['--slice=1']):
      printed += launch('logs.sh', *args, *extra, '--dry-run').stdout
  return printed


def test_every_multislice_flag_is_in_the_reference_table(launch):
  seen = set()
  for command in _commands_in(_printed_slices(launch, SLICES, [*SLICES, '--project=my-proj-1'])):
    argv = shlex.split(command)
    if argv[0] in ('gcloud', 'gsutil'):
      p = subprocess.run(argv, capture_output=True, text=True,
                         env={**launch.env, 'FAKE_FLAGS_ONLY': '1'}, timeout=60)
      assert p.returncode == 0, (argv, p.stderr)
      seen.add(' '.join(argv[:5] if argv[0] == 'gcloud' else argv[:3]))
  assert seen == {'gsutil -q cp', 'gcloud compute tpus tpu-vm ssh',
                  *(f'gcloud compute tpus queued-resources {verb}'
                    for verb in ('create', 'describe', 'delete', 'ssh'))}, seen


@pytest.mark.skipif(shutil.which('gcloud') is None, reason='the Cloud SDK is not installed')
def test_real_gcloud_parses_the_multislice_commands(launch, tmp_path):
  """The installed gcloud accepts --node-count/--node-prefix and queued-resources ssh
  --node=all: with no account it stops at authentication, after parsing."""
  commands = {}
  for command in _commands_in(_printed_slices(launch, SLICES)):
    argv = shlex.split(command)
    if argv[0] == 'gcloud' and argv[4] in ('create', 'ssh'):
      commands.setdefault((*argv[:5], *(a.split('=')[0] for a in argv[6:])), argv)
  assert sorted(k[3] for k in commands) == ['queued-resources', 'queued-resources', 'tpu-vm']
  env = {'PATH': os.environ['PATH'], 'HOME': str(tmp_path), 'CLOUDSDK_CONFIG': str(tmp_path),
         'CLOUDSDK_CORE_PROJECT': 'my-project-123', 'CLOUDSDK_CORE_DISABLE_PROMPTS': '1',
         'CLOUDSDK_CORE_CHECK_GCE_METADATA': 'false',
         'CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK': '1'}
  for argv in commands.values():
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode != 0 and 'account' in p.stderr, (argv[:5], p.stderr)


# ---------------------------------------------------------------- bad arguments

BASE = [a for a in SLICES if not a.startswith('--num_slices')]


@pytest.mark.parametrize('script', SCRIPTS)
@pytest.mark.parametrize('value', [['--num_slices=0'], ['--num_slices=-1'], ['--num_slices', '-1'],
                                   ['--num_slices=x'], ['--num_slices', 'x'], ['--num_slices=']])
def test_bad_num_slices(launch, script, value):
  p = launch(script, *BASE, *value, '--dry-run', ok=False)
  shown = value[0] + ('=' + value[1] if len(value) > 1 else '')
  assert p.returncode == 2 and p.stdout == '' and launch.calls() == []
  assert p.stderr.count('\n') == 1, p.stderr  # one line
  assert p.stderr.startswith(f'launch/{script}: error: {shown}: expected a number of slices '
                             'from 1 (the default: one slice) to 9999'), p.stderr


@pytest.mark.parametrize('script, args, message', [
    ('create.sh', [a for a in SLICES if a != '--queued'],
     '--num_slices=2: several slices are created as one queued resource: add --queued'),
    ('create.sh', ['--name=' + 'a' * 62] + SLICES[1:],
     'with --num_slices=2 the last node is ' + 'a' * 62 + '-1, longer than'),
    ('logs.sh', SLICES + ['--slice=2'],
     '--slice=2: expected a slice number 0 .. 1 (--num_slices=2) or all'),
    ('logs.sh', V5E + ['--slice=1'], '--slice=1: expected a slice number 0 .. 0'),
    ('run.sh', SLICES + ['--slice=0'], '--slice is not a flag of launch/run.sh'),
    ('run.sh', SLICES + ['--', '--config.mesh.dcn_data=4'],
     'trainer override --config.mesh.dcn_data=4: launch passes --config.mesh.dcn_data=2 from '
     '--num_slices=2; drop it'),
])
def test_bad_multislice_arguments(launch, script, args, message):
  p = launch(script, *args, ok=False)
  assert p.returncode == 2 and p.stdout == '' and launch.calls() == []
  assert p.stderr.startswith(f'launch/{script}: error: ') and message in p.stderr, p.stderr
  assert p.stderr.count('\n') == 1, p.stderr
