"""The ground floor's shared parsing: KEY=VALUE options and --config lookup."""
import argparse
import os

import pytest

from stvit_jax import cli, configs


def test_key_value_reads_python_literals_else_strings():
  assert cli.key_values(['a=1', 'b=0.5', 'c=avg', 'd=True', 'e=None', 'f=(2, 2, 6, 2)',
                         'g=1e-3', 'h=', 'i=a=b']) == dict(
      a=1, b=0.5, c='avg', d=True, e=None, f=(2, 2, 6, 2), g=1e-3, h='', i='a=b')
  for bad in ('depth', '=3', ''):
    with pytest.raises(argparse.ArgumentTypeError, match='expected KEY=VALUE'):
      cli.key_value(bad)


def test_a_config_path_not_found_here_is_looked_up_among_the_bundled(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # nothing named configs/ here
  bundled = os.path.join(configs.DIRECTORY, 'quickstart.py')
  assert cli.find_config('configs/quickstart.py', configs.DIRECTORY) == bundled
  assert cli.find_config('configs/quickstart.py:a,b', configs.DIRECTORY) == bundled + ':a,b'
  (tmp_path / 'mine.py').write_text('def get_config():\n  return None\n')
  assert cli.find_config('mine.py', configs.DIRECTORY) == 'mine.py'  # a file here wins
  with pytest.raises(cli.UserError, match=r"no such file 'configs/nope.py'; config files in "
                     r'.*: deit_b.py, deit_s.py'):
    cli.find_config('configs/nope.py', configs.DIRECTORY)
  with pytest.raises(cli.UserError, match="no such file 'configs/quickstart.py'$"):
    cli.find_config('configs/quickstart.py')  # no bundled configs to look in
  assert 'quickstart.py' in configs.names() and '__init__.py' not in configs.names()


def test_load_config_finds_the_bundled_file_and_names_bad_variants(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = cli.load_config('configs/quickstart.py', configs.DIRECTORY)
  assert config.model.name == 'stvit_deit_tiny'
  with pytest.raises(cli.UserError, match='--config=configs/quickstart.py:nope: '):
    cli.load_config('configs/quickstart.py:nope', configs.DIRECTORY)
