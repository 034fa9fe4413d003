"""Device mesh, parameter placement by regex rules, host-local -> global batches.

The mesh has axes ('data', 'fsdp'). Batches are split over both axes (every
device holds a slice of the batch); parameters and optimizer state are sharded
over 'fsdp' by the rules, replicated over 'data'. With fsdp=1 this is plain
data parallelism; the same code runs on 1 CPU, 8 fake devices or a pod.

Several slices (TPU slices joined by the data-center network, DCN): config.mesh.data
and config.mesh.fsdp describe ONE slice and config.mesh.dcn_data is the number of
slices (-1: all found). The mesh's 'data' axis spans dcn_data x data, slice-major, so
an 'fsdp' group never leaves its slice: parameters are sharded over the slice's fast
interconnect (ICI) and replicated across slices; only the gradient all-reduce over
'data' crosses DCN. Inside a slice the device order is the topology's
(`mesh_utils.create_device_mesh`: a ring on TPU; on CPU jax.devices() order), across
slices `mesh_utils.create_hybrid_device_mesh`. Slices are the devices' `slice_index`
on TPU; on CPU and GPU (no slice_index, or 0 for all) groups of consecutive processes
stand for slices (each process one slice when dcn_data equals the process count).
"""
from __future__ import annotations

import collections
import re

import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from stvit_jax import names

AXES = ('data', 'fsdp')
BATCH = P(AXES)  # the leading (batch) axis over all devices


def mesh_shape(config, num_devices, dcn=1):
  """The mesh's (data, fsdp): `config.mesh` data x fsdp per slice, one of them may be -1
  (the slice's remaining devices), times `dcn` slices on 'data'."""
  sizes = [config.mesh.data, config.mesh.fsdp]
  per = num_devices // dcn
  where = f'{per} devices' + (f' of a slice ({dcn} slices of {num_devices} devices)'
                              if dcn > 1 else '')
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh: at most one of data/fsdp may be -1; got {sizes}')
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    if known <= 0 or per % known:
      raise ValueError(f'config.mesh={dict(data=sizes[0], fsdp=sizes[1])} does not divide '
                       f'the {where}')
    sizes[sizes.index(-1)] = per // known
  if int(np.prod(sizes)) != per or min(sizes) < 1:
    raise ValueError(f'config.mesh data={sizes[0]} x fsdp={sizes[1]} must use all {where}')
  return sizes[0] * dcn, sizes[1]


def _granules(devices):
  """('slice_index' | 'process_index', [devices of each value, in order of the value]).
  Only TPU slice indices count: CPU devices of a multi-process run have slice_index 0."""
  tpu = devices[0].platform == 'tpu' and hasattr(devices[0], 'slice_index')
  attr = 'slice_index' if tpu else 'process_index'
  groups = collections.defaultdict(list)
  for d in devices:
    groups[getattr(d, attr)].append(d)
  return attr, [groups[k] for k in sorted(groups)]


def num_slices(config, devices):
  """config.mesh.dcn_data checked against `devices`: their slices (slice_index, TPU), or
  their processes (CPU, GPU), which it must divide. -1: all slices / processes found."""
  want = config.mesh.get('dcn_data', 1)
  attr, granules = _granules(list(devices))
  found = len(granules)
  if attr == 'slice_index':
    if want not in (-1, found):
      raise ValueError(f'config.mesh.dcn_data={want!r}: the devices form {found} slice(s) '
                       f'(their slice_index); set config.mesh.dcn_data={found} or -1')
    return found
  valid = [n for n in range(1, found + 1) if found % n == 0]
  if want == -1:
    return found
  if not isinstance(want, int) or want not in valid:
    raise ValueError(f'config.mesh.dcn_data={want!r} does not divide the {found} processes '
                     f'(without slice_index, groups of processes stand for slices); valid: '
                     f'{valid} or -1 (each process a slice)')
  return want


def slices(config, devices):
  """The devices of each slice, slice by slice (config.mesh.dcn_data groups)."""
  devices = list(devices)
  n = num_slices(config, devices)
  if n == 1:
    return [devices]
  _, granules = _granules(devices)
  per = len(granules) // n
  return [sum(granules[i * per:(i + 1) * per], []) for i in range(n)]


def device_grid(config, devices):
  """The (data, fsdp) array of `devices` for `config.mesh` (see the module docstring).
  A shape the slice's physical axes cannot take whole splits one of them (as any reshape
  could, before meshes followed the topology) rather than failing."""
  devices = list(devices)
  groups = slices(config, devices)
  n = len(groups)
  data, fsdp = mesh_shape(config, len(devices), n)
  if n == 1:
    return mesh_utils.create_device_mesh((data, fsdp), devices, allow_split_physical_axes=True)
  attr, granules = _granules(devices)
  if len(granules) == n:
    return _check_fsdp_in_slice(
        mesh_utils.create_hybrid_device_mesh((data // n, fsdp), (n, 1), devices,
                                             process_is_granule=attr == 'process_index',
                                             allow_split_physical_axes=True), groups)
  # Several processes per slice (CPU, GPU): create_hybrid_device_mesh's stacking of
  # per-slice meshes, over our groups of processes.
  return _check_fsdp_in_slice(np.concatenate([mesh_utils.create_device_mesh((data // n, fsdp), g,
                                                       allow_split_physical_axes=True)
                         for g in groups]), groups)


def _check_fsdp_in_slice(grid, groups):
  """Parameters are sharded over 'fsdp' (the grid's rows): no row may leave its slice,
  or every step would gather parameters over DCN."""
  where = {id(d): i for i, g in enumerate(groups) for d in g}
  for row in grid:
    if len({where[id(d)] for d in row}) > 1:
      raise ValueError(f'config.mesh.fsdp={len(row)}: an fsdp group spans slices '
                       f'{sorted({where[id(d)] for d in row})}; config.mesh.fsdp must divide '
                       f'the {len(groups[0])} devices of a slice')
  return grid


def make_mesh(config, devices=None):
  devices = jax.devices() if devices is None else list(np.asarray(devices).flat)
  return Mesh(device_grid(config, devices), AXES)


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
  if rule in mesh.axis_names and rule != 'fsdp':  # 'data': dcn_data x data, across slices
    raise ValueError(f'config.sharding_rules: rule {rule!r} would shard parameters over the '
                     f"mesh axis {rule!r}, which spans the slices (config.mesh.dcn_data) and "
                     "carries only the batch: every step would gather parameters over DCN; "
                     "valid rules: 'fsdp' (within a slice), 'replicate'")
  if rule != 'fsdp':
    raise ValueError(f"config.sharding_rules: rule {rule!r} is not one of 'fsdp', 'replicate'")
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
