"""Which library XLA:CPU hands matmuls and convolutions to: per compiled step.

jax 0.10's XLA:CPU gives dots, convolutions and the elementwise ops fused around
them to YNNPACK by default (DebugOptions `xla_cpu_experimental_ynn_fusion_type`).
On this project's 2-core AMD EPYC (AVX2) VM, float32, Eigen (YNNPACK off) runs
our models' inference faster, YNNPACK their training steps and a lone square
matmul. Measured 2026-12-02, quiet machine, each pair in one process:

  deit_small forward, batch 32          YNNPACK 7.7 img/s    Eigen 9.9 img/s
  STViT-R stem conv 48->96 /2, batch 32 YNNPACK 247 ms       Eigen 90 ms
  matmul 2048^3                         YNNPACK 108 GFLOP/s  Eigen 93 GFLOP/s
  deit_small train step, batch 64       YNNPACK 2.0 img/s    Eigen 1.3 img/s
    (python -m stvit_jax.tools.benchmark --train --cpu_library ..., two runs)

So each step is compiled with `compiler_options(...)` for its kind: INFERENCE
(evaluation, predict, the benchmark's forward) and TRAINING (the train step).
The option is per executable: nothing global changes, and `benchmark` takes its
matmul peak as the better of both libraries in the same process. Only the CPU
backend is affected. A user's own XLA_FLAGS setting of the option stands: then
no option is passed.
"""
from __future__ import annotations

import os

OPTION = 'xla_cpu_experimental_ynn_fusion_type'
# library -> the option's value; None leaves XLA's default (YNNPACK's fusions on)
LIBRARIES = {'eigen': '', 'ynnpack': None}
INFERENCE = 'eigen'   # forward-only steps
TRAINING = 'ynnpack'  # forward + backward + optimizer


def check_library(library):
  if library not in LIBRARIES:
    raise ValueError(f'XLA:CPU library {library!r} is not known; valid: '
                     f'{", ".join(LIBRARIES)}')
  return library


def user_sets_option():
  """Whether XLA_FLAGS names the option (the user's choice then stands)."""
  return f'--{OPTION}' in os.environ.get('XLA_FLAGS', '')


def platform(mesh=None):
  """The platform a step compiles for: the mesh's devices' (an AOT mesh of TPU topology
  devices says 'tpu' on a CPU host), else JAX's default backend."""
  if mesh is not None:
    return mesh.devices.flat[0].platform
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend()


def compiler_options(library, *, mesh=None):
  """`compiler_options` for `jax.jit` / `.compile` giving XLA:CPU's dots and convolutions
  to `library` ('eigen' or 'ynnpack') for a step on `mesh` (default: JAX's default
  backend); {} off CPU, for XLA's default, or when XLA_FLAGS sets the option itself."""
  value = LIBRARIES[check_library(library)]
  if platform(mesh) != 'cpu' or value is None or user_sets_option():
    return {}
  return {OPTION: value}


def describe(library):
  """Which library this process's CPU steps use, for run headers."""
  if platform() != 'cpu':
    return f'{platform()}: no XLA:CPU library choice'
  if user_sets_option():
    return f'XLA:CPU dots and convolutions: as XLA_FLAGS sets --{OPTION}'
  return f'XLA:CPU dots and convolutions: {library}'
