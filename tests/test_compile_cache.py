"""stvit_jax/runtime/compile_cache.py: where the persistent XLA cache goes, what it
keeps, and that a second process reads back what the first compiled."""
import json
import os
import subprocess
import sys

import pytest

from stvit_jax.runtime import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = r'''
import sys, jax, jax.numpy as jnp
from stvit_jax.runtime import compile_cache
print(compile_cache.enable(sys.argv[1] if sys.argv[1] != 'None' else None))
x = jnp.arange(256.0).reshape(16, 16)  # compiled (or loaded) outside the count
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
with compile_cache.Counts() as first:
  f(x).block_until_ready()
with compile_cache.Counts() as again:  # the same shapes: already in memory
  f(x).block_until_ready()
print(first.describe()); print(again.describe())
'''


def run_program(setting, env=None):
  env = dict(os.environ if env is None else env, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', PROGRAM, str(setting)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  return out.stdout.split('\n')[-4:-1]


def test_resolve_names_the_folder_or_off(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compile_cache.resolve(None) == str(tmp_path / 'stvit_jax' / 'xla')
  monkeypatch.setenv(compile_cache.ENV, '/somewhere/else')
  assert compile_cache.resolve(None) == '/somewhere/else'
  assert compile_cache.resolve('') is None
  assert compile_cache.resolve('gs://bucket/run/xla') == 'gs://bucket/run/xla'
  monkeypatch.chdir(tmp_path)
  assert compile_cache.resolve('cache') == str(tmp_path / 'cache')
  with pytest.raises(ValueError, match=r"compilation_cache_dir=3 must be a path, gs://"):
    compile_cache.resolve(3)
  with pytest.raises(ValueError, match=r'compilation_cache_min_compile_secs=-1 must be >= 0'):
    compile_cache.enable('', min_compile_secs=-1)


@pytest.mark.slow
def test_a_second_process_loads_what_the_first_compiled(tmp_path):
  cache = tmp_path / 'xla'
  assert run_program(cache) == [str(cache), 'compiled', 'no compile']
  assert any(cache.iterdir())
  assert run_program(cache) == [str(cache), 'loaded from the cache', 'no compile']
  # '' is off, even where the environment names a cache folder
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'env'))
  assert run_program('', env) == ['None', 'compiled', 'no compile']
  assert not (tmp_path / 'env').exists()


@pytest.mark.slow
def test_a_rerun_loads_its_train_step_and_reports_its_timings(data_dir, tmp_path):
  """The trainer's config field: the second run of a command (a new workdir: it trains
  from step 0 again) loads its train step instead of compiling it, and both runs write
  the start-up timings to summary.json and the log."""
  cache = tmp_path / 'xla'

  def train(workdir):
    proc = subprocess.run(
        [sys.executable, '-m', 'stvit_jax.main', '--config=configs/quickstart.py',
         f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
         '--config.model.embed_dim=16', '--config.model.num_heads=2',
         '--config.model.depth=3', '--config.model.num_base_layers=1',
         '--config.batch_size=16', '--config.total_steps=2', '--config.warmup_steps=1',
         '--config.eval_every_steps=2', f'--config.compilation_cache_dir={cache}'],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / 'summary.json') as f:
      return proc.stderr, json.load(f)

  log, summary = train(tmp_path / 'a')
  assert f'XLA compilation cache: {cache}' in log
  assert 'first train step:' in log and 'its program compiled' in log
  assert 'first evaluation:' in log and 'its step compiled' in log
  for key in ('build_s', 'first_step_s', 'to_first_step_s', 'eval_s'):
    assert 0 < summary[key] < 600, (key, summary)
  assert summary['to_first_step_s'] > summary['build_s'] + summary['first_step_s']
  log, _ = train(tmp_path / 'b')
  assert 'its program loaded from the cache' in log, log[-3000:]
  assert 'its step loaded from the cache' in log
