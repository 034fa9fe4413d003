"""Fixtures shared by test modules: the embedded digits dataset, the launch/ harness
(tests/launch_harness.py)."""
import os
import shutil
import sys

import pytest

from launch_harness import (FAKE_GCLOUD, FAKE_PYTHON3, FAKE_TRAINER, FAKE_UV, LAUNCH, ROOT,
                            Launcher, git, write_exe)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data_dir with `stvit_digits` prepared, built once per test session (per
  xdist worker) and shared by every test that trains on or reads the digits."""
  from stvit_jax.data import digits  # pylint: disable=g-import-not-at-top
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
