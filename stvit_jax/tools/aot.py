"""Ahead-of-time compilation of the real train step for a TPU slice, on a CPU machine.

Proves that a config's sharding and memory fit a slice before renting it (as
MaxText's train_compile does): libtpu compiles the step for compile-only
devices of the named topology; the host itself stays on CPU.

  pip install -e '.[tpu]'   # libtpu; kept out of the default install (noisy JAX start-up)
  python -m stvit_jax.tools.aot --config=configs/deit_s.py --topology=v5e:16x16
  python -m stvit_jax.tools.aot --config=configs/swin_s.py --topology=v4:2x2x4 \
      --config.batch_size=1024 --config.model.dtype=bfloat16
  python -m stvit_jax.tools.aot --config=configs/deit_s.py --topology=v5e:16x16 --num_slices=2

--topology is `<generation>:<chips per axis>` as libtpu names slices:
v5e:4x4 = v5e-16, v5e:16x16 = v5e-256, v6e:2x2 = v6e-4, v4:2x2x4 = v4-32,
v5p:2x2x1 = v5p-8 (v4 and v5p count TensorCores in the slice name; one device
here is one chip). It prints the mesh, the per-chip memory of the compiled
step from `memory_analysis()` against the chip's HBM, and the FLOPs per step
from `cost_analysis()`. A step that does not fit fails to compile: the report
then says so, with the sizes XLA gives.

--num_slices=N compiles for N such slices joined by the data-center network (DCN), with
config.mesh.dcn_data=N (libtpu's multi-slice topology; MaxText's compile_topology_num_slices),
and adds the bytes one step sends over DCN per slice, from the compiled HLO's collectives
whose groups span slices (`dcn.py` states the formulas), the seconds that takes at the
slice's documented DCN bandwidth (Chip.dcn_gbps per chip x its chips), and the step's
compute seconds at 40% MFU (Chip.peak_tflops).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
import time

from absl import flags
import jax
import numpy as np

from stvit_jax import cli, configs
from stvit_jax.runtime import compile_cache, sharding
from stvit_jax.data import pipeline
from stvit_jax.tools import dcn
from stvit_jax.train import functional, trainer

INSTALL = ("pip install 'stvit_jax[tpu]'  (or pip install 'libtpu==0.0.42.*', the libtpu "
           'that jax 0.10.2 pins)')
IMAGENET_TRAIN, IMAGENET_EVAL = 1_281_167, 50_000
GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  libtpu_name: str      # the generation as libtpu's topology names spell it
  hbm_gib: int          # per chip
  dims: int             # 2-D (v5e, v6e) or 3-D torus (v4, v5p)
  megacore: bool        # two TensorCores act as one device
  gcp_prefix: str       # Cloud TPU accelerator type = prefix + count
  cores_per_chip: int   # in the accelerator type's count
  peak_tflops: float    # bf16 peak per chip, Google Cloud's TPU pages
  dcn_gbps: float | None  # DCN bandwidth per chip, Gbit/s (see DCN_SOURCE)


# v5e: 'Data center network bandwidth per Pod 6.4 Tbps' / 256 chips = 25 Gbps per chip,
# the same as its 'Per-host NIC configuration 2 x 100 Gbps NIC' / 8 chips per host;
# v6e: 25.6 Tbps per Pod / 256 = 100 Gbps; v5p: 'DCN bandwidth per chip 50 Gbps'; v4: none given.
DCN_SOURCE = 'Google Cloud TPU docs (tpu/docs/v5e, v6e, v5p): DCN bandwidth per Pod / chips'
MFU = 0.4

CHIPS = {
    'v4': Chip('v4', 32, 3, True, 'v4-', 2, 275, None),
    'v5e': Chip('v5e', 16, 2, False, 'v5litepod-', 1, 197, 25),
    'v5p': Chip('v5p', 95, 3, True, 'v5p-', 2, 459, 50),
    'v6e': Chip('v6e', 32, 2, False, 'v6e-', 1, 918, 100),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str             # 'v5e:4x4'
  chip: Chip
  shape: tuple

  @property
  def num_chips(self):
    return int(np.prod(self.shape))

  @property
  def accelerator_type(self):  # 'v5litepod-16', 'v4-32'
    return f'{self.chip.gcp_prefix}{self.num_chips * self.chip.cores_per_chip}'

  @property
  def wrap(self):
    """Torus wrap-around links per axis, as Cloud TPU builds the slice (MaxText's table):
    v5e/v6e wrap an axis of 16 chips; v4/v5p wrap all axes of a slice of full 4x4x4 cubes."""
    if self.chip.dims == 2:
      return tuple(d == 16 for d in self.shape) + (False,)
    return (all(d % 4 == 0 for d in self.shape),) * 3


def parse_topology(name):
  """'v5e:16x16' -> Topology; a malformed name is an error that shows valid ones."""
  m = re.fullmatch(r'(v\w+):(\d+(?:x\d+)*)', name.strip())
  chip = CHIPS.get(m.group(1)) if m else None
  shape = tuple(int(d) for d in m.group(2).split('x')) if m else ()
  if chip is None or len(shape) != chip.dims or min(shape) < 1:
    raise ValueError(f'--topology={name!r} is not a TPU slice name; expected '
                     f'<generation>:<chips per axis> with generation in {sorted(CHIPS)}, '
                     '2 axes for v5e/v6e and 3 for v4/v5p, e.g. v5e:4x4 (v5e-16), '
                     'v5e:16x16 (v5e-256), v6e:2x2, v4:2x2x4 (v4-32), v5p:2x2x1 (v5p-8)')
  return Topology(f'{m.group(1)}:{m.group(2)}', chip, shape)


def libtpu_path():
  path = os.environ.get('TPU_LIBRARY_PATH')
  if path and os.path.isfile(path):
    return path
  spec = importlib.util.find_spec('libtpu')
  return None if spec is None else spec.origin


def require_libtpu():
  if libtpu_path() is None:
    raise ImportError('stvit_jax.tools.aot compiles for TPUs with libtpu, which is not installed '
                      f'here. Install it with: {INSTALL}. It stays out of the default '
                      'install because it makes JAX start-up noisy on machines without TPUs.')


def use_cpu_host():
  """JAX_PLATFORMS=cpu semantics: this process computes on CPU and never opens a local TPU.

  Call before anything touches a JAX backend; libtpu is then used only as a compiler.
  """
  platforms = jax.config.jax_platforms
  if not platforms:
    jax.config.update('jax_platforms', 'cpu')
  elif platforms.split(',')[0] != 'cpu':
    raise ValueError(f'JAX_PLATFORMS={platforms!r}: ahead-of-time compilation runs the host on '
                     'CPU; unset JAX_PLATFORMS or set it to cpu')


def tpu_devices(topology, num_slices=1):
  """Compile-only devices of `num_slices` slices (one per chip; their slice_index says
  which), from libtpu."""
  require_libtpu()
  use_cpu_host()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # Without a TPU VM's metadata server libtpu asks for these and warns loudly.
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  # The /tmp/libtpu_lockfile guards TPU chips; compiling opens none, so several
  # compiles (other users, pytest workers) may run side by side.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', topology.accelerator_type)
  desc = topologies.get_topology_desc(
      topology_name=f'{topology.chip.libtpu_name}:{"x".join(map(str, topology.shape))}',
      platform='tpu', chip_config_name='megacore' if topology.chip.megacore else 'default',
      chips_per_host_bounds=(2, 2, 1), num_slices=num_slices, wrap=topology.wrap)
  devices = list(desc.devices)
  if len(devices) != topology.num_chips * num_slices:
    raise RuntimeError(f'libtpu made {len(devices)} devices for {num_slices} x {topology.name}; '
                       f'expected one per chip ({topology.num_chips * num_slices})')
  return devices


def build_train_step(config, mesh):
  """The trainer's jitted train step and its abstract, sharded inputs on `mesh`:
  `trainer.build`, as `loop.train_and_evaluate` runs it, without data or checkpoints."""
  info = pipeline.DatasetInfo(num_classes=config.model.num_classes, num_train=IMAGENET_TRAIN,
                              num_eval=IMAGENET_EVAL)
  trainer.check_config(config, info, mesh)
  # ImageNet's epoch length: only the schedule's constants depend on it, not the
  # program's shapes, memory or FLOPs.
  built = trainer.build(config, mesh,
                        pipeline.batch_spec(config.data, config.batch_size,
                                            functional.input_kind(config)),
                        steps_per_epoch=max(1, IMAGENET_TRAIN // config.batch_size))
  return built.train_step, built.abstract, built.batch_spec


def compile_train_step(config, topology, num_slices=1):
  """Compiles `config`'s train step for `num_slices` x `topology` ('v5e:4x4' or a
  Topology) -> report dict; several slices set config.mesh.dcn_data=num_slices.

  The report has 'fits' False (and 'error') when XLA cannot fit the step in HBM.
  """
  topology = parse_topology(topology) if isinstance(topology, str) else topology
  if not isinstance(num_slices, int) or num_slices < 1:
    raise ValueError(f'--num_slices={num_slices!r}: expected a whole number >= 1')
  if num_slices > 1:
    config = config.copy_and_resolve_references()
    config.mesh.dcn_data = num_slices
  devices = tpu_devices(topology, num_slices)
  mesh = sharding.make_mesh(config, devices=devices)
  step, state, batch = build_train_step(config, mesh)
  params = state['params']
  report = {
      'topology': topology.name, 'accelerator_type': topology.accelerator_type,
      'device_kind': devices[0].device_kind, 'chips': len(devices), 'slices': num_slices,
      'hosts': len({d.process_index for d in devices}), 'mesh': dict(mesh.shape),
      'model': config.model.name, 'dtype': config.model.dtype,
      'params': sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
      'batch_size': config.batch_size, 'grad_accum_steps': config.optim.grad_accum_steps,
      'hbm_gib': topology.chip.hbm_gib,
      'example': 'clip' if functional.input_kind(config) == 'video' else 'image',
  }
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e) and 'out of memory' not in str(e).lower():
      raise
    report.update(fits=False, error=str(e).strip(), compile_s=time.perf_counter() - t0)
    return report
  report['compile_s'] = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  memory = {k: getattr(mem, f'{k}_size_in_bytes') for k in
            ('argument', 'output', 'alias', 'temp', 'generated_code')}
  # Donated state: outputs alias their arguments and take no second buffer.
  memory['total'] = (memory['argument'] + memory['output'] - memory['alias'] + memory['temp']
                     + memory['generated_code'])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', float('nan')))  # of one device's partitioned program
  report.update(memory=memory, fits=memory['total'] <= topology.chip.hbm_gib * GIB,
                flops_per_chip=flops, flops_per_step=flops * len(devices),
                # XLA's cost analysis counts a while loop's body once, not per trip
                flops_lower_bound=bool(config.model.get('scan_layers', False)))
  report['compute_s'] = flops / (MFU * topology.chip.peak_tflops * 1e12)
  if num_slices > 1:  # ids in the HLO: positions in the device assignment, the mesh's order
    hlo = compiled.as_text()
    if os.environ.get('STVIT_JAX_AOT_HLO'):  # where to keep the optimized HLO, to read
      with open(os.environ['STVIT_JAX_AOT_HLO'], 'w') as f:
        f.write(hlo)
    found = dcn.dcn_report(hlo, [d.slice_index for d in mesh.devices.flat])
    gbps = topology.chip.dcn_gbps
    report.update(dcn=found, dcn_gbps_per_chip=gbps,
                  dcn_gbps_per_slice=gbps and gbps * topology.num_chips,
                  dcn_s=gbps and found['bytes_per_slice'] * 8 / (gbps * 1e9 * topology.num_chips))
  return report


def _dcn_lines(r):
  d = r['dcn']
  kinds = ', '.join(f'{k} x{c}' for k, (c, _) in d['by_kind'].items()) or 'none'
  sent = (f"DCN/step     {_bytes(d['bytes_per_slice'])} sent per slice ({kinds} cross "
          f"slices; the HLO has {d.get('dcn_sends', 0)} DCN sends, {d['collectives']} collectives)")
  compute = (f"compute/step {1e3 * r['compute_s']:.1f} ms at {100 * MFU:.0f}% MFU "
             f"({_flops(r['flops_per_chip'])} per chip)")
  if r.get('dcn_gbps_per_slice') is None:
    return [sent + ': no documented DCN bandwidth for this chip', compute]
  return [sent, f"             = {1e3 * r['dcn_s']:.1f} ms at {r['dcn_gbps_per_slice']:g} Gbit/s "
          f"per slice ({r['chips'] // r['slices']} chips x {r['dcn_gbps_per_chip']:g} Gbit/s, "
          f"{DCN_SOURCE})", compute]


def _bytes(b):
  return f'{b / GIB:.2f} GiB' if b >= GIB / 10 else f'{b / 2**20:.1f} MiB'


def _flops(f):
  for unit, scale in (('PFLOP', 1e15), ('TFLOP', 1e12), ('GFLOP', 1e9), ('MFLOP', 1e6)):
    if f >= scale:
      return f'{f / scale:.3g} {unit}'
  return f'{f:.3g} FLOP'


TRY = ('             try a larger slice, config.mesh.fsdp > 1 (shards params and optimizer '
       'state), config.optim.grad_accum_steps > 1 (fewer activations live), '
       'config.model.remat_policy=full or a smaller config.batch_size')


def format_report(r):
  mesh = ' x '.join(f'{k}={v}' for k, v in r['mesh'].items())
  n = r.get('slices', 1)
  times = f'{n} x ' if n > 1 else ''
  lines = [
      f"topology     {times}{r['topology']} = {times}{r['accelerator_type']} ({r['device_kind']}): "
      f"{r['chips']} chips on {r['hosts']} host{'s' * (r['hosts'] > 1)}"
      + (f', {n} slices joined by DCN' if n > 1 else ''),
      f'mesh         {mesh}',
      f"model        {r['model']} ({r['params']:,} params), compute {r['dtype']}",
      f"global batch {r['batch_size']} ({r['batch_size'] // r['chips']} per chip), "
      f"grad_accum_steps={r['grad_accum_steps']}",
  ]
  if 'error' in r:  # XLA refused to compile the step into HBM
    lines += [f"memory/chip  DOES NOT FIT in {r['hbm_gib']} GiB HBM: XLA says",
              '             ' + r['error'].replace('\n', '\n             '), TRY]
    return '\n'.join(lines)
  m = r['memory']  # compiled; its footprint may still exceed HBM
  lines += [
      f"memory/chip  arguments {_bytes(m['argument'])} + outputs {_bytes(m['output'])} "
      f"- aliased {_bytes(m['alias'])} + temps {_bytes(m['temp'])} "
      f"+ code {_bytes(m['generated_code'])}",
      f"             = {_bytes(m['total'])} of {r['hbm_gib']} GiB HBM "
      f"({100 * m['total'] / (r['hbm_gib'] * GIB):.0f}%): "
      f"{'fits' if r['fits'] else 'DOES NOT FIT'}",
      f"FLOPs/step   {_flops(r['flops_per_chip'])} per chip, "
      f"{_flops(r['flops_per_step'])} on the {'slice' if n == 1 else f'{n} slices'} "
      f"({_flops(r['flops_per_step'] / r['batch_size'])} per {r['example']})"
      + (': a lower bound, XLA counts a scanned block once (scan_layers)'
         if r.get('flops_lower_bound') else ''),
  ] + (_dcn_lines(r) if n > 1 else []) + [
      f"compiled in  {r['compile_s']:.1f} s",
  ] + ([] if r['fits'] else [TRY])
  return '\n'.join(lines)


# ---------------------------------------------------------------- command line

FLAGS = flags.FLAGS
flags.DEFINE_string('topology', None, 'TPU slice, e.g. v5e:4x4 (v5e-16), v5e:16x16 (v5e-256), '
                    'v6e:2x2, v4:2x2x4 (v4-32), v5p:2x2x1 (v5p-8).')
flags.DEFINE_integer('num_slices', 1, 'Number of such slices joined by DCN (multi-slice); '
                     'sets config.mesh.dcn_data.')
cli.define_config_flag()


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments {argv[1:]}: every option is a --flag')
  use_cpu_host()  # before anything initialises a backend
  compile_cache.enable(FLAGS.config.get('compilation_cache_dir'),
                       FLAGS.config.get('compilation_cache_min_compile_secs',
                                        compile_cache.DEFAULT_MIN_COMPILE_SECS))
  if FLAGS.num_slices < 1:
    raise cli.UserError(f'--num_slices={FLAGS.num_slices}: expected a whole number >= 1 '
                        '(the number of slices joined by DCN)')
  try:
    topology = parse_topology(FLAGS.topology)
    require_libtpu()
  except (ValueError, ImportError) as e:
    raise SystemExit(f'error: {e}') from None
  report = compile_train_step(FLAGS.config, topology, FLAGS.num_slices)
  print(format_report(report), flush=True)
  if not report['fits']:
    sys.exit(2)


def run(argv=None):
  """The command line, callable in-process (tests): returns the exit status."""
  return cli.run_absl(main, cli.flags_parser('config', 'topology', config_dir=configs.DIRECTORY), argv)


if __name__ == '__main__':
  sys.exit(run())
