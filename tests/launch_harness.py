"""The harness of the launch/ tests (fixtures in conftest.py): launch/ runs from a
copy in a temporary git repository with a fake `gcloud` and `gsutil` first on PATH.
They record their argv, refuse a command or flag that tests/fixtures/gcloud_flags.json
(the Cloud SDK reference) does not list, keep TPU states in files (describe prints
READY, PREEMPTED, ...), and `gsutil cp` copies to a local "bucket". A queued resource made
with --node-count N has the nodes PREFIX-0 .. PREFIX-(N-1) (Multislice). With FAKE_SSH_EXEC
the fake `ssh --command=SCRIPT` runs SCRIPT with bash under a temporary HOME (with
FAKE_NODE_HOMES, one HOME per node: HOME/nodes/NODE), against fake worker tools
(python3 -> uv -> venv -> trainer), so the worker-side shell is executed too. Needs bash
and git.
"""
import json
import os
from pathlib import Path
import re
import subprocess

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / 'launch'
SCRIPTS = ['create.sh', 'setup.sh', 'run.sh', 'logs.sh', 'resume.sh', 'delete.sh']
JAX_PIN = re.search(r'"jax==([^"]+)"', (ROOT / 'pyproject.toml').read_text()).group(1)

# The README's examples: v5e-16 spot in us-west4-a, v4-32 reserved (queued resource).
V5E = ['--name=stvit-s', '--zone=us-west4-a', '--accelerator=v5litepod-16', '--spot',
       '--bucket=gs://my-bucket', '--run=deit_s', '--config=configs/deit_s.py']
V4 = ['--name=stvit-v4', '--zone=us-central2-b', '--accelerator=v4-32', '--reserved',
      '--queued', '--bucket=gs://my-bucket', '--run=deit_s_v4', '--config=configs/deit_s.py']
# The README's Multislice example: two v5e-16 slices, spot, one queued resource.
SLICES = ['--name=stvit-m', '--zone=us-west4-a', '--accelerator=v5litepod-16', '--spot',
          '--queued', '--num_slices=2', '--bucket=gs://my-bucket', '--run=deit_m',
          '--config=configs/deit_s.py']

# What each gcloud / gsutil command launch/ runs accepts, from the Cloud SDK reference
# (its "_source" says which pages): the fakes refuse any other command or flag, as the
# real tools do, so a misspelt flag fails the launch tests.
FLAGS = ROOT / 'tests' / 'fixtures' / 'gcloud_flags.json'
FAKE_GCLOUD = f'FLAGS_FILE = {str(FLAGS)!r}\n' + r'''
import json, os, shutil, subprocess, sys

prog, args = os.path.basename(sys.argv[0]), sys.argv[1:]
state = os.environ['FAKE_STATE']
with open(os.path.join(state, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps([prog] + args) + '\n')
FLAGS = json.load(open(FLAGS_FILE))


def check(command, flags, allowed):  # gcloud's own words for an unknown flag
  if allowed is None:
    sys.exit(f'ERROR: ({command}) is not a command launch/ may run (see {FLAGS_FILE})')
  for flag in flags:
    if flag.split('=', 1)[0] not in allowed:
      sys.exit(f"ERROR: ({command}) unrecognized arguments: {flag.split('=', 1)[0]}")


if prog == 'gsutil':  # gsutil [OPTION...] SUBCOMMAND [OPTION...] ARG...
  sub = next(i for i, a in enumerate(args) if not a.startswith('-'))
  check('gsutil', args[:sub], FLAGS['gsutil'])
  check(f'gsutil {args[sub]}', [a for a in args[sub + 1:] if a.startswith('-')],
        FLAGS.get(f'gsutil {args[sub]}'))
else:  # gcloud compute tpus KIND VERB NAME --flag=value... [-- SSH_ARGS]
  own = args[:args.index('--')] if '--' in args else args
  check('gcloud.' + '.'.join(args[:4]), [a for a in own[4:] if a.startswith('-')],
        None if 'gcloud ' + ' '.join(args[:4]) not in FLAGS
        else FLAGS['gcloud ' + ' '.join(args[:4])] + FLAGS['gcloud'])
if os.environ.get('FAKE_FLAGS_ONLY'):  # checked, nothing else done
  sys.exit(0)


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
nodes_file = path('nodes')  # a multislice queued resource's nodes, one a line
if verb != 'create' and not os.path.exists(path('tpu-vm' if verb == 'ssh' and kind == 'tpu-vm'
                                                else kind)):
  sys.exit(f"ERROR: (gcloud.compute.tpus.{kind}.{verb}) NOT_FOUND: Resource "
           f"'projects/p/locations/{flags['--zone']}/nodes/{name}' was not found")
if verb == 'create':
  states = os.environ.get('FAKE_CREATE_STATES', 'ACTIVE' if kind == 'queued-resources' else 'READY')
  open(path(kind), 'w').write(states)
  if '--node-count' in flags:  # Multislice: nodes PREFIX-0 .. PREFIX-(N-1), each a TPU VM
    nodes = [f"{flags.get('--node-prefix', name)}-{i}" for i in range(int(flags['--node-count']))]
    open(nodes_file, 'w').write('\n'.join(nodes))
  else:
    nodes = [name]
  for node in nodes:
    open(os.path.join(state, f'tpu-vm.{node}'), 'w').write('READY')
  print(f'Create request issued for: [{name}]')
elif verb == 'describe':  # the states queued in the file, one per call; the last one stays
  states = open(path(kind)).read().split()
  print(states[0])
  open(path(kind), 'w').write(' '.join(states[1:] or states))
elif verb == 'delete':
  os.remove(path(kind))
  nodes = open(nodes_file).read().split() if os.path.exists(nodes_file) else [name]
  for node in nodes:
    if os.path.exists(os.path.join(state, f'tpu-vm.{node}')):
      os.remove(os.path.join(state, f'tpu-vm.{node}'))
  if os.path.exists(nodes_file):
    os.remove(nodes_file)
  print(f'Deleted [{name}].')
elif verb == 'ssh' and kind == 'tpu-vm' and os.environ.get('FAKE_SSH_EXEC'):
  env = dict(os.environ, PATH=os.environ['FAKE_WORKER_PATH'] + os.pathsep + os.environ['PATH'])
  if os.environ.get('FAKE_NODE_HOMES'):  # each node (slice) its own disks
    env['HOME'] = os.path.join(env['HOME'], 'nodes', name)
    os.makedirs(env['HOME'], exist_ok=True)
  sys.exit(subprocess.run(['bash', '-c', flags['--command']], env=env).returncode)
elif verb == 'ssh':
  node = f" --node={flags['--node']}" if '--node' in flags else ''
  print(f"fake ssh {name}{node} --worker={flags['--worker']}")
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


def write_exe(path, text):
  path.write_text(text)
  path.chmod(0o755)


def git(cwd, *args):
  return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=cwd,
                        check=True, capture_output=True, text=True).stdout.strip()


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


CREATE_V5E = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'stvit-s', '--zone=us-west4-a',
              '--accelerator-type=v5litepod-16', '--version=v2-alpha-tpuv5-lite', '--spot']
CREATE_V4_QUEUED = ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'stvit-v4',
                    '--zone=us-central2-b', '--node-id=stvit-v4', '--accelerator-type=v4-32',
                    '--runtime-version=tpu-ubuntu2204-base', '--reserved']
DESCRIBE_V4_QUEUED = ['gcloud', 'compute', 'tpus', 'queued-resources', 'describe', 'stvit-v4',
                      '--zone=us-central2-b', '--format=value(state.state)']
