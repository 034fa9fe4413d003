"""The package layout: what the wheel ships and how the layers import each other."""
import os
import subprocess
import sys
import tomllib


import stvit_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(stvit_jax.__file__)


def pyproject():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)


def test_every_subpackage_ships_in_the_wheel():
  listed = set(pyproject()['tool']['setuptools']['packages'])
  found = {'stvit_jax.configs'} | {
      'stvit_jax' + root[len(PACKAGE):].replace(os.sep, '.')
      for root, _, files in os.walk(PACKAGE) if '__init__.py' in files}
  assert listed == found


def test_every_module_has_a_layer():
  layers = pyproject()['tool']['importlinter']['contracts'][0]['layers']
  named = {m.strip() for layer in layers for m in layer.split('|')}
  children = {os.path.splitext(f)[0] for f in os.listdir(PACKAGE)
              if (f.endswith('.py') and f != '__init__.py')
              or os.path.isfile(os.path.join(PACKAGE, f, '__init__.py'))}
  assert children - {'configs'} == named  # configs/ is outside the package tree in a checkout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
  """The contract is not vacuous: models (low) importing weights (high), even inside a
  function, fails lint-imports. Checked on a copy of the package."""
  lint = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
  assert os.path.exists(lint), 'import-linter is not installed: pip install -e ".[test]"'
  copy = tmp_path / 'stvit_jax'
  subprocess.run(['cp', '-r', PACKAGE, str(copy)], check=True)
  registry = copy / 'models' / 'registry.py'
  registry.write_text(registry.read_text() + '\n\ndef _upward():\n'
                      '  from stvit_jax.weights import hub  # deliberately upward\n'
                      '  return hub\n')
  (tmp_path / 'pyproject.toml').write_text(open(os.path.join(ROOT, 'pyproject.toml')).read())
  env = dict(os.environ, PYTHONPATH=str(tmp_path))
  out = subprocess.run([lint, '--no-cache'], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode != 0, out.stdout
  assert 'stvit_jax.models.registry -> stvit_jax.weights.hub' in out.stdout, out.stdout
  assert 'BROKEN' in out.stdout
