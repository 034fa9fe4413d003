"""Multi-process start-up: `initialize()` connects the N processes of one run.

Where the layout comes from, first match wins:
  * flags `--coordinator_address=host:port --num_processes=N --process_id=i`
    (main.py passes them here), or the environment variables
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
  * STVIT_JAX_INIT=1 (set by launch/ on multi-host Cloud TPU VMs): JAX detects
    whatever is not given (coordinator, count and id from the TPU metadata);
  * none of these: a single process, no coordinator.

Every process then runs the same program on global arrays (sharding.py); each
reads its own rows of every batch (data/pipeline.py), all of them write the
checkpoint together (orbax), and process 0 alone writes metrics and summaries.
A process that does not come up within the initialization timeout, or that
dies later (missed heartbeats), makes the others exit with an error instead
of waiting forever.
"""
from __future__ import annotations

import os
import socket
import sys

import jax
from absl import logging

# Seconds; the environment variables override them (the tests use short ones).
INIT_TIMEOUT_S = 300  # all processes must have connected by then (pod VMs start minutes apart)
HEARTBEAT_TIMEOUT_S = 60  # a process silent this long is declared dead and the run fails

_ENV = {'coordinator_address': 'JAX_COORDINATOR_ADDRESS', 'num_processes': 'JAX_NUM_PROCESSES',
        'process_id': 'JAX_PROCESS_ID'}


def _env_int(name, default):
  value = os.environ.get(name)
  if value in (None, ''):
    return default
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} must be an integer') from None


def settings(coordinator_address=None, num_processes=None, process_id=None, environ=None):
  """-> (mode, kwargs): mode 'single', 'explicit' or 'auto'; kwargs for jax.distributed."""
  environ = os.environ if environ is None else environ
  given = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
           'process_id': process_id}
  for key, var in _ENV.items():
    if given[key] is None and environ.get(var) not in (None, ''):
      given[key] = environ[var]
  for key in ('num_processes', 'process_id'):
    if isinstance(given[key], str):
      try:
        given[key] = int(given[key])
      except ValueError:
        raise ValueError(f'{_ENV[key]}={given[key]!r} must be an integer') from None
  auto = environ.get('STVIT_JAX_INIT', '') not in ('', '0')
  missing = [k for k, v in given.items() if v is None]
  if len(missing) == 3 and not auto:
    return 'single', {}
  if missing and not auto:
    raise ValueError(
        f'multi-process run: {", ".join(k for k in given if k not in missing)} given but '
        f'{", ".join(missing)} missing; set all of --coordinator_address, --num_processes, '
        '--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or '
        'STVIT_JAX_INIT=1 on Cloud TPU VMs to detect them')
  n, i = given['num_processes'], given['process_id']
  if n is not None and n < 1:
    raise ValueError(f'--num_processes={n} must be >= 1')
  if n is not None and i is not None and not 0 <= i < n:
    raise ValueError(f'--process_id={i} must be in [0, --num_processes={n})')
  return ('auto' if missing else 'explicit'), {k: v for k, v in given.items() if v is not None}


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """Connects this process to the others of the run (no-op for a single process).

  Must run before anything touches a JAX backend. Returns the mode ('single',
  'explicit' or 'auto').
  """
  mode, kwargs = settings(coordinator_address, num_processes, process_id)
  if mode == 'single':
    return mode
  # Cross-process collectives on CPU devices (tests, CPU clusters); no effect on TPU/GPU.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  init_timeout = _env_int('STVIT_JAX_INIT_TIMEOUT', INIT_TIMEOUT_S)
  heartbeat = _env_int('STVIT_JAX_HEARTBEAT_TIMEOUT', HEARTBEAT_TIMEOUT_S)
  where = ', '.join(f'{k}={v}' for k, v in kwargs.items()) or 'auto-detected'
  # JAX aborts the process (C++ fatal error, no Python exception) when a process is
  # missing at start-up (DEADLINE_EXCEEDED ... RegisterTask) or dies later (heartbeats):
  # say beforehand what such an abort means.
  print(f'multi-process start-up ({where}): all processes must connect within '
        f'{init_timeout} s, and one silent for {heartbeat} s is declared dead; either makes '
        'the others abort with "JAX distributed service detected fatal errors"',
        file=sys.stderr, flush=True)
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=init_timeout,
                               heartbeat_timeout_seconds=heartbeat)
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(
        f'multi-process start-up failed ({where}): not all processes connected to the '
        f'coordinator within {init_timeout} s. Start every process with the same '
        '--coordinator_address and --num_processes and a distinct --process_id, and check '
        f'that the coordinator (process 0) is reachable. Cause: {e}') from e
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)  # progress logs come from process 0
  return mode


def layout(config=None):
  """'process i of N: L local / G global devices (platform; local ids [..]; host H[; slice
  s of S]), mesh {...}[ = S slices of data x fsdp]'."""
  from stvit_jax.runtime import sharding  # pylint: disable=g-import-not-at-top
  local = jax.local_devices()
  text = (f'process {jax.process_index()} of {jax.process_count()}: '
          f'{jax.local_device_count()} local / {jax.device_count()} global devices '
          f'({jax.devices()[0].platform}; local ids {[d.id for d in local]}; '
          f'host {socket.gethostname()}')
  if config is None or 'mesh' not in config:
    return text + ')'
  try:
    groups = sharding.slices(config, jax.devices())
    mine = next(i for i, g in enumerate(groups) if local[0] in g)
    shape = sharding.mesh_shape(config, jax.device_count(), len(groups))
    text += f'; slice {mine} of {len(groups)}), mesh {dict(zip(sharding.AXES, shape))}'
    if len(groups) > 1:
      text += f' = {len(groups)} slices of data {shape[0] // len(groups)} x fsdp {shape[1]}'
    if shape[1] > 1:  # which devices share parameters: the mesh's rows holding ours
      rows = [[d.id for d in row] for row in sharding.device_grid(config, jax.devices())
              if any(d in local for d in row)]
      more = f' and {len(rows) - 8} more' if len(rows) > 8 else ''
      text += f', fsdp groups {rows[:8]}{more}'
  except ValueError as e:  # train.py reports it with the whole config check
    text += f'), mesh invalid: {e}'
  return text
