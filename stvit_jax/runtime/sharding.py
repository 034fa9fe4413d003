"""Device mesh, parameter placement by regex rules, host-local -> global batches.

The mesh has axes ('data', 'fsdp'). Batches are split over both axes (every
device holds a slice of the batch); parameters and optimizer state are sharded
over 'fsdp' by the rules, replicated over 'data'. With fsdp=1 this is plain
data parallelism; the same code runs on 1 CPU, 8 fake devices or a pod.
"""
from __future__ import annotations

import re

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from stvit_jax import names

AXES = ('data', 'fsdp')
BATCH = P(AXES)  # the leading (batch) axis over all devices


def mesh_shape(config, num_devices):
  """(data, fsdp) from `config.mesh`; one of them may be -1 (the remaining devices)."""
  sizes = [config.mesh.data, config.mesh.fsdp]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh: at most one of data/fsdp may be -1; got {sizes}')
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    if known <= 0 or num_devices % known:
      raise ValueError(f'config.mesh={dict(data=sizes[0], fsdp=sizes[1])} does not divide '
                       f'the {num_devices} devices')
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices or min(sizes) < 1:
    raise ValueError(f'config.mesh data={sizes[0]} x fsdp={sizes[1]} must use all '
                     f'{num_devices} devices')
  return tuple(sizes)


def make_mesh(config, devices=None):
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(mesh_shape(config, devices.size)), AXES)


def check_batch(name, batch_size, mesh):
  n = mesh.size
  if batch_size % n or batch_size % jax.process_count():
    raise ValueError(f'config.{name}={batch_size} must be divisible by the number of devices '
                     f'({n}) and of processes ({jax.process_count()}); try '
                     f'{max(n, batch_size // n * n)}')


def spec_for(shape, rule, mesh):
  """PartitionSpec for one array under `rule` ('fsdp' | 'replicate')."""
  if rule == 'replicate':
    return P()
  if rule != 'fsdp':
    raise ValueError(f"sharding rule {rule!r} is not one of 'fsdp', 'replicate'")
  size = mesh.shape['fsdp']
  if size == 1:
    return P()
  # big_vision's fsdp: shard the largest dimension that the fsdp size divides.
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % size == 0:
      return P(*[('fsdp' if d == dim else None) for d in range(len(shape))])
  return P()


def tree_shardings(tree, mesh, rules):
  """NamedShardings for every array of `tree`: the first rule whose regex matches
  its whole path ('blocks/0/attn/qkv/kernel'; optimizer state paths contain the
  parameter path) decides."""
  compiled = [(re.compile(pattern), rule) for pattern, rule in rules]

  def one(name, x):
    for pattern, rule in compiled:
      if pattern.fullmatch(name):
        return NamedSharding(mesh, spec_for(np.shape(x), rule, mesh))
    raise ValueError(f'no sharding rule matches {name!r}; rules: {list(rules)}. '
                     "End config.sharding_rules with ('.*', 'replicate') or ('.*', 'fsdp').")
  shardings = names.map_with_names(one, tree)
  if logging.vlog_is_on(1):
    for name, s in names.flatten(shardings).items():
      logging.vlog(1, '%s: %s', name, s.spec)
  return shardings


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharding(mesh):
  return NamedSharding(mesh, BATCH)


def to_global(batch, mesh):
  """Host-local numpy batch (this process's rows) -> global jax.Arrays split over devices."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
