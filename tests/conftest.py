"""Fixtures shared by test modules: the embedded digits dataset, the launch/ harness
(tests/launch_harness.py)."""
import os
import shutil
import sys

# One persistent XLA compilation cache for the whole suite: both xdist workers, and
# the subprocesses, notebook kernels and multi-process runs they start (the variable
# is inherited). Many tests compile the same small models and train steps; a cache
# hit replaces a compile of seconds by a read. Set before anything imports JAX; a
# user's own JAX_COMPILATION_CACHE_DIR is kept.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'stvit_jax',
    'test-xla-cache'))
# Every compile, not only those over 1 s: a model's eager initialisation is hundreds of
# small compiles (measured: a tiny STViT-DeiT built and compiled in a fresh process,
# 44 s without the cache, 9 s with it).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
# This process (and JAX, if a pytest plugin imported it before this file) through the
# library's own setting, which the trainer and the tools use (the variables above reach
# the processes the tests start).
from stvit_jax.runtime import compile_cache  # noqa: E402

compile_cache.enable(os.environ['JAX_COMPILATION_CACHE_DIR'],
                     float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))

import subprocess  # noqa: E402

import pytest  # noqa: E402

from launch_harness import (FAKE_GCLOUD, FAKE_PYTHON3, FAKE_TRAINER, FAKE_UV, LAUNCH, ROOT,
                            Launcher, git, write_exe)


# Optional dependencies whose tests must run, not skip (.ci/run: 'torch,timm'): a skip
# for want of one of them is reported as a failure, so CI cannot lose those tests quietly.
REQUIRED = [m for m in os.environ.get('STVIT_JAX_REQUIRE', '').split(',') if m]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if not (REQUIRED and report.skipped and call.excinfo is not None):
    return
  reason = str(call.excinfo.value)
  missing = [m for m in REQUIRED if f"'{m}'" in reason or reason.startswith(f'{m}:')]
  if missing:
    report.outcome = 'failed'
    report.longrepr = (f'{item.nodeid}: skipped for want of {", ".join(missing)}, which '
                       f'STVIT_JAX_REQUIRE={",".join(REQUIRED)} requires: {reason}')


_started = None  # the processes the running test has started (None outside tests)
_popen_init = subprocess.Popen.__init__


def _tracked_popen_init(self, *args, **kwargs):
  _popen_init(self, *args, **kwargs)
  if _started is not None:
    _started.append(self)


subprocess.Popen.__init__ = _tracked_popen_init


@pytest.fixture(autouse=True)
def _kill_leftover_processes():
  """Kills what a test started and left running: a trainer of total_steps=100000
  whose test failed before stopping it would otherwise train on through the rest of
  the suite on the same two cores. (Set up after the module and session fixtures,
  so their long-lived processes are not tracked.)"""
  global _started
  _started = []
  yield
  started, _started = _started, None
  for proc in started:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data_dir with `stvit_digits` prepared, built once per test session (per
  xdist worker) and shared by every test that trains on or reads the digits."""
  from stvit_jax.data.builders import digits  # pylint: disable=g-import-not-at-top
  d = str(tmp_path_factory.mktemp('tfds'))
  digits.prepared_builder(d)
  return d


@pytest.fixture(scope='module')
def repo(tmp_path_factory):
  """A git repository holding launch/, pyproject.toml and a config: (root, commit)."""
  root = tmp_path_factory.mktemp('repo')
  shutil.copytree(LAUNCH, root / 'launch', ignore=shutil.ignore_patterns('*.md'))
  shutil.copy(ROOT / 'pyproject.toml', root / 'pyproject.toml')
  (root / 'configs').mkdir()
  (root / 'configs' / 'deit_s.py').write_text('def get_config(arg=None):\n  pass\n')
  git(root, 'init', '-q')
  git(root, 'add', '.')
  git(root, 'commit', '-qm', 'init')
  return root, git(root, 'rev-parse', 'HEAD')


@pytest.fixture(scope='module')
def fakebin(tmp_path_factory):
  d = tmp_path_factory.mktemp('fakebin')
  (d / 'bin').mkdir()
  for prog in ('gcloud', 'gsutil'):
    write_exe(d / 'bin' / prog, f'#!{sys.executable}\n{FAKE_GCLOUD}')
  (d / 'worker').mkdir()
  write_exe(d / 'worker' / 'python3', FAKE_PYTHON3)
  write_exe(d / 'worker' / 'fake-uv', FAKE_UV)
  write_exe(d / 'worker' / 'fake-trainer', FAKE_TRAINER)
  return d


@pytest.fixture
def launch(repo, fakebin, tmp_path):
  launcher = Launcher(repo, fakebin, tmp_path)
  yield launcher
  for pid_file in launcher.home.glob('stvit_jax_runs/*/pid'):  # runs these tests started
    try:
      os.killpg(int(pid_file.read_text()), 9)
    except (ProcessLookupError, ValueError):
      pass
