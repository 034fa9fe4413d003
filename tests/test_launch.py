"""launch/ (Cloud TPU VM scripts): the exact gcloud / gsutil commands they print and
run, their validation, shellcheck, and the README's examples. The worker side and
resume are in test_launch_worker.py; the fakes in launch_harness.py. Seconds;
shellcheck runs when installed (apt-get install -y shellcheck).
"""
import os
import re
import shlex
import shutil
import subprocess

import pytest

from launch_harness import (CREATE_V4_QUEUED, CREATE_V5E, DESCRIBE_V4_QUEUED, JAX_PIN, LAUNCH,
                            SCRIPTS, SLICES, V4, V5E, record_printed, ssh)


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
  assert ('python -m stvit_jax.main --config=configs/deit_s.py --workdir=gs://my-bucket/deit_s --config.compilation_cache_dir=gs://my-bucket/xla_cache --config.compilation_cache_min_compile_secs=1 '
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
  assert ('python -m stvit_jax.main --config=configs/deit_s.py:baseline --workdir=gs://b-1/one --config.compilation_cache_dir=gs://b-1/xla_cache --config.compilation_cache_min_compile_secs=1\n'
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
    ('run.sh', V5E + ['--', '--workdir=gs://x/y', '--config.compilation_cache_dir=gs://x/xla_cache', '--config.compilation_cache_min_compile_secs=1'],
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
    'slices': SLICES[:7] + ['--run=stvit_deit_s_2x', '--config=configs/deit_s.py',
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
    printed += launch('logs.sh', *args, '--worker=all', '--dry-run').stdout
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


def test_every_gcloud_and_gsutil_flag_is_in_the_reference_table(launch):
  """Each command the scripts print (both README setups, with --project too) passes the fake
  gcloud / gsutil's check against tests/fixtures/gcloud_flags.json (Cloud SDK 528.0.0)."""
  printed = ''
  for args in (V5E, V4, [*V5E, '--project=my-proj-1']):
    for script in SCRIPTS:
      printed += launch(script, *args, '--dry-run').stdout
  seen = set()
  for command in _commands_in(printed):
    argv = shlex.split(command)
    if argv[0] in ('gcloud', 'gsutil'):
      p = subprocess.run(argv, capture_output=True, text=True,
                         env={**launch.env, 'FAKE_FLAGS_ONLY': '1'}, timeout=60)
      assert p.returncode == 0, (argv, p.stderr)
      seen.add(' '.join(argv[:5] if argv[0] == 'gcloud' else argv[:3]))
  assert seen == {'gsutil -q cp', *(f'gcloud compute tpus {kind} {verb}'
                                    for kind in ('tpu-vm', 'queued-resources')
                                    for verb in ('create', 'describe', 'delete')),
                  'gcloud compute tpus tpu-vm ssh'}, seen


def test_a_misspelt_flag_fails_loudly(launch, tmp_path):
  bad = tmp_path / 'launch'
  shutil.copytree(launch.root / 'launch', bad)
  create = bad / 'create.sh'
  create.write_text(create.read_text().replace('--accelerator-type=', '--acelerator-type='))
  p = subprocess.run(['bash', str(create), *V5E], capture_output=True, text=True,
                     env=launch.env, timeout=60)
  assert p.returncode != 0
  assert ('ERROR: (gcloud.compute.tpus.tpu-vm.create) unrecognized arguments: '
          '--acelerator-type') in p.stderr, p.stderr
  assert not launch.exists('tpu-vm', 'stvit-s')  # refused: nothing was created
  for argv, message in (
      (['gsutil', '-q', 'cp', '-X', 'a', 'gs://b/a'], '(gsutil cp) unrecognized arguments: -X'),
      (['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'n', '--zone=z', '--workers=all'],
       'unrecognized arguments: --workers'),
      (['gcloud', 'compute', 'tpus', 'tpu-vm', 'stop', 'n', '--zone=z'],
       'is not a command launch/ may run')):
    p = subprocess.run(argv, capture_output=True, text=True, env=launch.env, timeout=60)
    assert p.returncode != 0 and message in p.stderr, (argv, p.stderr)
