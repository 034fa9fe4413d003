"""stvit_jax.runtime.xla_cpu: which library XLA:CPU gives the model steps' dots and convolutions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stvit_jax.tools import benchmark, benchmark_table
from stvit_jax.runtime import xla_cpu


def _uses_ynnpack(compiled):
  return 'ynn_fusion' in compiled.as_text()


def test_eigen_compiles_without_ynnpack_and_the_default_with_it(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  x = jnp.ones((64, 64))
  matmul = jax.jit(lambda a: a @ a)
  eigen = matmul.lower(x).compile(xla_cpu.compiler_options('eigen'))
  ynnpack = matmul.lower(x).compile(xla_cpu.compiler_options('ynnpack'))
  assert not _uses_ynnpack(eigen) and _uses_ynnpack(ynnpack)
  np.testing.assert_allclose(eigen(x), ynnpack(x), rtol=1e-6)


def test_options_only_for_cpu_and_not_against_the_users_xla_flags(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert xla_cpu.compiler_options('eigen') == {xla_cpu.OPTION: ''}
  assert xla_cpu.compiler_options('ynnpack') == {}  # XLA's own default

  class TpuMesh:  # an AOT mesh of topology devices, on a CPU host
    devices = np.array([type('Device', (), {'platform': 'tpu'})()])
  assert xla_cpu.compiler_options('eigen', mesh=TpuMesh()) == {}
  monkeypatch.setenv('XLA_FLAGS', f'--{xla_cpu.OPTION}=-individual_convolution')
  assert xla_cpu.compiler_options('eigen') == {}
  assert 'XLA_FLAGS' in xla_cpu.describe('eigen')


def test_an_unknown_library_names_the_valid_ones():
  with pytest.raises(ValueError, match='mkl.*valid: eigen, ynnpack'):
    xla_cpu.compiler_options('mkl')


def test_inference_steps_use_eigen_and_the_train_step_ynnpack(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  tiny = dict(image_size=32, num_classes=10, embed_dim=16, depth=1, num_heads=2, patch_size=8)
  assert (xla_cpu.INFERENCE, xla_cpu.TRAINING) == ('eigen', 'ynnpack')
  assert not _uses_ynnpack(benchmark.model_case('deit_tiny', 2, **tiny).compiled)
  assert _uses_ynnpack(benchmark.model_case('deit_tiny', 2, train=True, **tiny).compiled)
  for library, ynnpack in (('ynnpack', True), ('eigen', False)):  # the benchmark's override
    case = benchmark.model_case('deit_tiny', 2, train=library == 'eigen', cpu_library=library,
                                **tiny)
    assert _uses_ynnpack(case.compiled) == ynnpack


def test_the_peak_is_the_faster_library(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  peaks = benchmark.peak_cases('float32', 64)
  assert [c.name for c in peaks] == ['matmul 64^3 (eigen)', 'matmul 64^3 (ynnpack)']
  peaks[0].seconds, peaks[1].seconds = [2.0, 2.0, 9.0], [1.0, 1.0, 0.5]
  rate, case = benchmark_table.peak_of(peaks)
  assert case is peaks[1] and rate == pytest.approx(2 * 64 ** 3 / 1.0)
