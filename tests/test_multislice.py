"""Multi-slice meshes (config.mesh.dcn_data): the device grid from slices or processes,
BatchNorm statistics per slice, and 2 processes as 2 "slices" of 4 fake CPU devices
training exactly like 1 process of 8 devices on the same (data=2, fsdp=4) grid."""
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.experimental import mesh_utils

from stvit_jax.models import execution, layers
from stvit_jax.runtime import sharding
from test_multiprocess import ROOT, STEPS, final_state, finish, launch, train_losses


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  id: int
  process_index: int
  platform: str = 'cpu'
  device_kind: str = 'cpu'


@dataclasses.dataclass(frozen=True)
class FakeSliceDevice(FakeDevice):
  slice_index: int = 0


def cfg(**mesh):
  return ml_collections.ConfigDict({'mesh': {'data': -1, 'fsdp': 1, **mesh}})


def ids(grid):
  return [[d.id for d in row] for row in grid]


def fake(processes, per_process):
  return [FakeDevice(p * per_process + i, p) for p in range(processes) for i in range(per_process)]


def test_one_slice_keeps_the_enumeration_order():
  devices = fake(2, 4)[::-1]  # whatever order jax.devices() gives
  assert ids(sharding.device_grid(cfg(), devices)) == [[d.id] for d in devices]
  assert ids(sharding.device_grid(cfg(data=2, fsdp=4), devices)) == [
      [7, 6, 5, 4], [3, 2, 1, 0]]


def test_processes_stand_for_slices():
  devices = fake(2, 4)
  grid = sharding.device_grid(cfg(data=1, fsdp=4, dcn_data=2), devices)
  assert ids(grid) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # an fsdp group never spans processes
  assert ids(grid) == ids(mesh_utils.create_hybrid_device_mesh((1, 4), (2, 1), devices,
                                                               process_is_granule=True))
  assert ids(sharding.device_grid(cfg(data=-1, fsdp=2, dcn_data=-1), devices)) == [
      [0, 1], [2, 3], [4, 5], [6, 7]]
  assert sharding.mesh_shape(cfg(data=-1, fsdp=2), 8, 2) == (4, 2)
  # 4 processes as 2 slices of 2 processes each.
  devices = fake(4, 2)
  assert ids(sharding.device_grid(cfg(fsdp=4, dcn_data=2), devices)) == [
      [0, 1, 2, 3], [4, 5, 6, 7]]
  assert [[d.id for d in s] for s in sharding.slices(cfg(dcn_data=2), devices)] == [
      [0, 1, 2, 3], [4, 5, 6, 7]]
  with pytest.raises(ValueError, match=r'config.mesh.dcn_data=3 does not divide the 4 '
                                       r'processes .* valid: \[1, 2, 4\] or -1'):
    sharding.device_grid(cfg(dcn_data=3), devices)
  with pytest.raises(ValueError, match=r'must use all 4 devices of a slice \(2 slices'):
    sharding.device_grid(cfg(data=1, fsdp=8, dcn_data=2), devices)


def test_slices_come_from_slice_index_on_tpu():
  # Two TPU slices of 2 hosts each: the slice, not the process, decides.
  devices = [FakeSliceDevice(i, i // 2, 'tpu', slice_index=i // 4) for i in range(8)]
  assert [[d.id for d in s] for s in sharding.slices(cfg(dcn_data=-1), devices[::-1])] == [
      [3, 2, 1, 0], [7, 6, 5, 4]]  # slices in slice_index order
  assert sharding.num_slices(cfg(dcn_data=2), devices) == 2
  for wrong in (1, 4):
    with pytest.raises(ValueError, match=rf'config.mesh.dcn_data={wrong}: the devices form 2 '
                                         r'slice\(s\) .* set config.mesh.dcn_data=2 or -1'):
      sharding.num_slices(cfg(dcn_data=wrong), devices)
  # CPU devices of a multi-process run have slice_index 0: processes stand for slices.
  cpu = [FakeSliceDevice(i, i // 4) for i in range(8)]
  assert ids(sharding.device_grid(cfg(fsdp=4, dcn_data=2), cpu)) == [[0, 1, 2, 3],
                                                                     [4, 5, 6, 7]]


def bn(groups=1, cls=layers.BatchNorm):
  m = cls(6, momentum=0.9, epsilon=1e-5, dtype=jnp.float32, rngs=nnx.Rngs(0))
  return execution.batch_norm_groups(m, groups) if groups > 1 else m


def test_batch_norm_per_group_is_one_batch_norm_per_group():
  x = jax.random.normal(jax.random.key(0), (8, 5, 5, 6)) * 3 + 1
  grouped, first, second = bn(2), bn(), bn()
  y = grouped(x, use_running_average=False)
  np.testing.assert_array_equal(y, jnp.concatenate([first(x[:4], use_running_average=False),
                                                    second(x[4:], use_running_average=False)]))
  for stat in ('mean', 'var'):  # the running statistics move toward the groups' average
    np.testing.assert_allclose(getattr(grouped, stat)[...],
                               (getattr(first, stat)[...] + getattr(second, stat)[...]) / 2,
                               rtol=1e-6)
  # One group is nnx.BatchNorm itself; evaluation uses the running statistics.
  plain = bn(cls=nnx.BatchNorm)
  np.testing.assert_array_equal(bn()(x, use_running_average=False),
                                plain(x, use_running_average=False))
  np.testing.assert_array_equal(grouped(x, use_running_average=True),
                                nnx.merge(*nnx.split(grouped))(x, use_running_average=True))
  assert nnx.merge(*nnx.split(grouped)).stat_groups == 2  # the graph definition carries it
  with pytest.raises(ValueError, match='a batch of 6 does not split into 4'):
    bn(4)(x[:6], use_running_average=False)


def test_trainer_takes_batch_norm_groups_from_the_slices():
  from stvit_jax.train import trainer  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass
  class M:
    devices: np.ndarray

  mesh = M(np.asarray(fake(2, 4), dtype=object))
  assert trainer.batch_norm_groups(cfg(dcn_data=2), mesh) == 2
  assert trainer.batch_norm_groups(cfg(dcn_data=2, batch_norm='global'), mesh) == 1
  assert trainer.batch_norm_groups(cfg(), mesh) == 1
  with pytest.raises(ValueError, match=r"config.mesh.batch_norm='sync' is not one of "
                                       r"\['slice', 'global'\]"):
    trainer.batch_norm_groups(cfg(batch_norm='sync'), mesh)


# The statistics' all-reduces of a grouped BatchNorm under a (data=2, fsdp=4) mesh whose
# rows are 2 slices: each over one slice's 4 devices (forward and backward), none over 8.
HLO_SCRIPT = textwrap.dedent('''
    import re, jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    import ml_collections
    from stvit_jax.models import execution, layers
    from stvit_jax.runtime import sharding
    config = ml_collections.ConfigDict({'mesh': {'data': 2, 'fsdp': 4}})
    mesh = sharding.make_mesh(config)
    assert mesh.devices.tolist() == np.asarray(jax.devices()).reshape(2, 4).tolist()
    for groups in (1, 2):
      bn = execution.batch_norm_groups(layers.BatchNorm(6, rngs=nnx.Rngs(0)), groups)
      graphdef, state = nnx.split(bn)
      def loss(state, x):
        model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, state))  # fresh, as make_apply
        return jnp.sum(model(x, use_running_average=False) ** 2)
      x = jax.ShapeDtypeStruct((16, 5, 5, 6), jnp.float32,
                               sharding=NamedSharding(mesh, P(sharding.AXES)))
      hlo = jax.jit(jax.grad(loss, argnums=1)).lower(state, x).compile().as_text()
      for line in hlo.splitlines():
        if 'all-reduce(' in line:
          sizes, reduced = re.search(r'replica_groups=mesh\\[(.*?)\\] \\{(.*?)\\}', line).groups()
          sizes = dict(re.findall(r"'(\\w+)'=(\\d+)", sizes))
          print(groups, np.prod([int(sizes[a.strip("' ")]) for a in reduced.split(',')]))
''')


@pytest.mark.slow
def test_batch_norm_statistics_stay_inside_a_slice():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT}
  out = subprocess.run([sys.executable, '-c', HLO_SCRIPT], env=env, cwd=ROOT, text=True,
                       capture_output=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  sizes = sorted(set(tuple(map(int, line.split())) for line in out.stdout.split('\n') if line))
  assert sizes == [(1, 8), (2, 4)], out.stdout  # whole batch: 8 devices; per slice: 4


@pytest.mark.slow
def test_two_slices_match_one_process(data_dir, tmp_path):
  one, two, resumed = (str(tmp_path / n) for n in ('one', 'two', 'resumed'))
  every = ['--config.checkpoint_every_steps=3', '--config.checkpoint.keep=5']
  t0 = time.time()
  runs = (launch(one, data_dir, '--config.mesh.data=2', '--config.mesh.fsdp=4', *every),
          launch(two, data_dir, '--config.mesh.dcn_data=2', '--config.mesh.data=1',
                 '--config.mesh.fsdp=4', *every, processes=2, devices=4))
  (log1,), log2 = finish(runs[0], one, timeout=900), finish(runs[1], two, timeout=900)
  print(f'1 x 8 and 2 slices x 4 devices side by side: {time.time() - t0:.1f}s')
  assert "mesh {'data': 2, 'fsdp': 4}, fsdp groups [[0, 1, 2, 3], [4, 5, 6, 7]]" in log1
  local = [re.search(r'process %d of 2: .*local ids (\[[\d, ]*\])' % i, log2[i]).group(1)
           for i in (0, 1)]
  for i in (0, 1):  # each slice's (process's) 4 devices are one fsdp group
    assert (f"; slice {i} of 2), mesh {{'data': 2, 'fsdp': 4}} = 2 slices of data 1 x fsdp 4, "
            f'fsdp groups [{local[i]}]') in log2[i], log2[i][:3000]
  assert local[0] != local[1]
  ref, got = train_losses(one), train_losses(two)
  assert sorted(ref) == sorted(got) == list(range(1, STEPS + 1))
  diffs = [abs(ref[s] - got[s]) for s in sorted(ref)]
  print('per-step |loss difference|:', diffs)
  assert max(diffs) <= 1e-5, diffs
  a, b = final_state(one), final_state(two)
  assert a.keys() == b.keys() and len(a) > 10
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)
  assert sorted(s for s in os.listdir(os.path.join(two, 'checkpoints')) if s.isdigit()) == [
      '3', '6']

  # Resumed from step 3 on the same 2 slices: the same steps 4-6, bit for bit.
  shutil.copytree(two, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '6'))
  log3 = finish(launch(resumed, data_dir, '--config.mesh.dcn_data=2', '--config.mesh.data=1',
                       '--config.mesh.fsdp=4', *every, processes=2, devices=4), resumed,
                timeout=900)
  assert 'resuming from' in log3[0] and 'at step 3' in log3[0], log3[0][-3000:]
  again = train_losses(resumed)
  assert [again[s] for s in (4, 5, 6)] == [got[s] for s in (4, 5, 6)]
  c = final_state(resumed)
  for k in b:
    np.testing.assert_array_equal(b[k], c[k], err_msg=k)


class _Mesh:
  axis_names = sharding.AXES
  shape = {'data': 2, 'fsdp': 4}


def test_a_sharding_rule_over_the_slice_spanning_axis_is_refused():
  with pytest.raises(ValueError, match=r"config.sharding_rules: rule 'data' would shard "
                                       r"parameters over the mesh axis 'data', which spans the "
                                       r"slices .* valid rules: 'fsdp' \(within a slice\), "
                                       r"'replicate'"):
    sharding.spec_for((8, 4), 'data', _Mesh())
  with pytest.raises(ValueError, match=r"config.sharding_rules: rule 'model' is not one of"):
    sharding.spec_for((8, 4), 'model', _Mesh())
  assert sharding.spec_for((8, 4), 'fsdp', _Mesh()) == sharding.P('fsdp', None)


def test_an_fsdp_group_across_slices_is_refused():
  devices = fake(2, 4)
  groups = sharding.slices(cfg(dcn_data=2), devices)
  across = np.asarray(devices, dtype=object).reshape(4, 2).T  # rows: [0, 2, 4, 6], [1, 3, 5, 7]
  with pytest.raises(ValueError, match=r'config.mesh.fsdp=4: an fsdp group spans slices '
                                       r'\[0, 1\]; config.mesh.fsdp must divide the 4'):
    sharding._check_fsdp_in_slice(across, groups)  # pylint: disable=protected-access
  good = np.asarray(devices, dtype=object).reshape(2, 4)
  assert sharding._check_fsdp_in_slice(good, groups) is good  # pylint: disable=protected-access


# libtpu's compile-only devices of 2 x v5e-16 (4x4 chips each; coords per slice): the
# mesh for each fsdp size, as rows of (slice_index, x, y).
TOPOLOGY_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import ml_collections
    from stvit_jax.runtime import sharding
    from stvit_jax.tools import aot
    out = {}
    for slices in (1, 2):
      devices = aot.tpu_devices(aot.parse_topology('v5e:4x4'), slices)
      for fsdp in (2, 4, 8, 16):
        config = ml_collections.ConfigDict({'mesh': {'data': -1, 'fsdp': fsdp,
                                                     'dcn_data': slices}})
        grid = sharding.device_grid(config, devices)
        out[f'{slices}x{fsdp}'] = [[(getattr(d, 'slice_index', 0), *d.coords[:2]) for d in row]
                                   for row in grid]
    print(json.dumps(out))
''')


def _connected(chips):
  """Whether the chips' (x, y) coords form one piece under nearest-neighbour links."""
  left, seen = set(chips), set()
  todo = [chips[0]]
  while todo:
    x, y = todo.pop()
    if (x, y) in seen:
      continue
    seen.add((x, y))
    todo += [c for c in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)) if c in left]
  return seen == left


@pytest.mark.slow
def test_fsdp_groups_are_neighbouring_chips_of_one_slice_on_v5e():
  from test_aot import libtpu_requirement  # pylint: disable=g-import-not-at-top
  req = libtpu_requirement()
  target = os.environ.get('STVIT_JAX_LIBTPU_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'stvit_jax', req.replace('==', '-').replace('*', 'x'))
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec('libtpu') is None and not os.path.isdir(
      os.path.join(target, 'libtpu')):
    pytest.skip(f'libtpu ({req}) is not installed: `bash .ci/run` puts it in {target}')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  done = subprocess.run([sys.executable, '-c', TOPOLOGY_SCRIPT, target, ROOT], env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  import json  # pylint: disable=g-import-not-at-top
  grids = json.loads(done.stdout.strip().splitlines()[-1])
  for name, rows in grids.items():
    slices, fsdp = map(int, name.split('x'))
    assert len(rows) == 16 * slices // fsdp and all(len(r) == fsdp for r in rows), name
    for row in rows:
      assert len({s for s, _, _ in row}) == 1, (name, row)  # never across slices
      chips = [(x, y) for _, x, y in row]
      assert len(set(chips)) == fsdp and _connected(chips), (name, row)  # neighbours
    # slice-major: the first half of the rows is slice 0, the second slice 1
    assert [r[0][0] for r in rows] == sorted(r[0][0] for r in rows), name
