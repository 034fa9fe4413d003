"""Ahead-of-time compilation of the train step for a TPU slice on this CPU machine.

The compile test runs in a child process with libtpu on its path: the installed one
(`pip install -e '.[tpu]'`) or, failing that, the pinned wheel that `.ci/run` installs
into a private cache; it is skipped, saying so, where neither is there. The topology names
and the missing-libtpu message are checked everywhere.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tomllib

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from stvit_jax.configs import deit_s  # noqa: E402
from stvit_jax.tools import aot  # noqa: E402

GIB = 2 ** 30


@pytest.mark.parametrize('name, chips, accelerator, wrap', [
    ('v5e:2x2', 4, 'v5litepod-4', (False, False, False)),
    ('v5e:4x4', 16, 'v5litepod-16', (False, False, False)),
    ('v5e:16x16', 256, 'v5litepod-256', (True, True, False)),
    ('v6e:2x2', 4, 'v6e-4', (False, False, False)),
    ('v4:2x2x4', 16, 'v4-32', (False, False, False)),
    ('v4:4x4x4', 64, 'v4-128', (True, True, True)),
    ('v5p:2x2x1', 4, 'v5p-8', (False, False, False)),
])
def test_topology_names(name, chips, accelerator, wrap):
  t = aot.parse_topology(name)
  assert (t.num_chips, t.accelerator_type, t.wrap) == (chips, accelerator, wrap)


@pytest.mark.parametrize('bad', ['v5e:2x2x2', 'v4:2x2', 'v7:2x2', 'v5e-16', 'v5e:0x4'])
def test_bad_topology_names_list_valid_ones(bad):
  with pytest.raises(ValueError, match=r'--topology=.*v5e:4x4 \(v5e-16\)'):
    aot.parse_topology(bad)


def test_missing_libtpu_names_the_extra(monkeypatch):
  monkeypatch.setattr(aot, 'libtpu_path', lambda: None)
  with pytest.raises(ImportError, match=r"pip install 'stvit_jax\[tpu\]'"):
    aot.require_libtpu()


def tiny_config():
  config = deit_s.get_config()  # STViT-DeiT-S, shrunk; fsdp=2 so parameters are sharded
  for k, v in dict(embed_dim=32, num_heads=2, depth=3, img_size=32, patch_size=8,
                   num_base_layers=1, num_semantic=4, dtype='bfloat16').items():
    config.model[k] = v
  config.data.image_size = 32
  config.batch_size = config.eval_batch_size = 16
  config.mesh.fsdp = 2
  return config


def libtpu_requirement():
  """The pin of pyproject's `tpu` extra, e.g. 'libtpu==0.0.42.*'."""
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    (req,) = tomllib.load(f)['project']['optional-dependencies']['tpu']
  return req


@pytest.fixture(scope='module')
def libtpu_pythonpath():
  """A PYTHONPATH entry that provides libtpu: '' where it is installed already, else the
  private cache that `.ci/run` fills (`pip install --target`, outside the virtualenv, so
  the suite's own process never loads libtpu: it would make every JAX start-up probe for
  TPUs). Tests never install anything; without libtpu the compile test is skipped."""
  if importlib.util.find_spec('libtpu') is not None:
    return ''
  req = libtpu_requirement()
  target = os.environ.get('STVIT_JAX_LIBTPU_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'stvit_jax', req.replace('==', '-').replace('*', 'x'))
  if not os.path.isdir(os.path.join(target, 'libtpu')):
    pytest.skip(f'libtpu ({req}) is not installed: `bash .ci/run` puts it in {target}, or '
                "pip install -e '.[tpu]'")
  return target


# Runs in a child process that has libtpu on its path; prints the report and the
# reference figures the test checks it against, as JSON.
COMPILE_TINY = r"""
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import jax, numpy as np
from stvit_jax.tools import aot, flops
from stvit_jax.runtime import sharding
aot.use_cpu_host()
from test_aot import tiny_config
config = tiny_config()
r = aot.compile_train_step(config, 'v5e:2x2')
mesh = sharding.make_mesh(config, devices=aot.tpu_devices(aot.parse_topology('v5e:2x2')))
step, state, batch = aot.build_train_step(config, mesh)
shard_bytes = sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
                  for x in jax.tree.leaves((state, batch)))
print(json.dumps({'report': r, 'text': aot.format_report(r), 'shard_bytes': shard_bytes,
                  'matmul_flops': 2 * flops.count_macs(step, state, batch)}))
"""


@pytest.mark.slow
def test_compiles_tiny_stvit_train_step_for_v5e_2x2(libtpu_pythonpath):
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      p for p in (libtpu_pythonpath, os.environ.get('PYTHONPATH', '')) if p)}
  env.pop('JAX_PLATFORMS', None)
  done = subprocess.run([sys.executable, '-c', COMPILE_TINY, ROOT, os.path.join(ROOT, 'tests')],
                        capture_output=True, text=True, env=env, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  r, text = out['report'], out['text']
  print(text)
  assert (r['chips'], r['device_kind'], r['mesh']) == (4, 'TPU v5 lite', {'data': 2, 'fsdp': 2})
  assert r['model'] == 'stvit_deit_small' and r['dtype'] == 'bfloat16' and r['fits']

  # Arguments: this chip's shard of the state (params, AdamW mu and nu, step) and of
  # the batch, at least; TPU tiling pads small arrays, so allow up to 64x.
  m, shard_bytes = r['memory'], out['shard_bytes']
  assert shard_bytes <= m['argument'] <= 64 * shard_bytes
  assert m['alias'] > 0  # the donated state is updated in place
  # (How 'total' is made from these: test_report_arithmetic, with numbers worked by hand.)
  assert m['argument'] + m['temp'] <= m['total'] < GIB

  # FLOPs: the matmuls of forward + backward (2 FLOPs per MAC, counted from the
  # step's jaxpr) are most of them; norms, softmax, mixup and AdamW add the rest.
  assert 0 < r['flops_per_chip'] < r['flops_per_step']
  assert out['matmul_flops'] <= r['flops_per_step'] <= 2 * out['matmul_flops'], out

  assert 'v5e:2x2 = v5litepod-4' in text and 'data=2 x fsdp=2' in text
  assert 'of 16 GiB HBM' in text and ': fits' in text


def test_report_counts_flops_per_clip_for_video():
  report = dict(topology='v4:2x2x4', accelerator_type='v4-32', device_kind='TPU v4', chips=16,
                hosts=4, mesh={'data': 16, 'fsdp': 1}, model='stvit_video_swin_tiny',
                params=28_039_462, dtype='bfloat16', batch_size=64, grad_accum_steps=1,
                hbm_gib=32, fits=True, flops_per_chip=1.58e12, flops_per_step=25.3e12,
                compile_s=1.0, example='clip',
                memory=dict(argument=2**30, output=2**30, alias=2**30, temp=2**33,
                            generated_code=2**28, total=2**33 + 2**30 + 2**28))
  text = aot.format_report(report)
  assert 'global batch 64 (4 per chip)' in text and '(395 GFLOP per clip)' in text
  assert 'per image' in aot.format_report({**report, 'example': 'image'})
  # compiled, but its footprint exceeds HBM: the memory line says so, with what to try
  over = aot.format_report({**report, 'hbm_gib': 8, 'fits': False})
  assert 'of 8 GiB HBM (116%): DOES NOT FIT' in over and 'remat_policy=full' in over
  assert 'lower bound' in aot.format_report({**report, 'flops_lower_bound': True})
  assert 'lower bound' not in text


class _Fake:
  def __init__(self, **kw):
    self.__dict__.update(kw)


def test_report_arithmetic(monkeypatch):
  """compile_train_step's sums on a stand-in compiled step whose XLA figures are literal
  numbers: the expected totals are worked out by hand below, not by the report's formulas."""
  mem = dict(argument_size_in_bytes=1000, output_size_in_bytes=600, alias_size_in_bytes=400,
             temp_size_in_bytes=3000, generated_code_size_in_bytes=50)
  compiled = _Fake(memory_analysis=lambda: _Fake(**mem),
                   cost_analysis=lambda: [{'flops': 2.5e9}])  # one chip's program
  step = _Fake(lower=lambda state, batch: _Fake(compile=lambda: compiled))
  state = {'params': {'w': np.zeros((3, 4)), 'b': np.zeros(5)}, 'step': np.zeros(())}
  monkeypatch.setattr(aot, 'tpu_devices', lambda t, n=1: [
      _Fake(device_kind='TPU v5 lite', process_index=i // 4) for i in range(t.num_chips)])
  monkeypatch.setattr(aot.sharding, 'make_mesh',
                      lambda config, devices: _Fake(shape={'data': len(devices), 'fsdp': 1}))
  monkeypatch.setattr(aot, 'build_train_step', lambda config, mesh: (step, state, {}))
  r = aot.compile_train_step(tiny_config(), 'v5e:4x4')
  # argument 1000 + output 600 - aliased 400 (donated, no second buffer) + temp 3000 + code 50
  assert r['memory']['total'] == 4250
  assert r['fits'] and r['params'] == 17 and (r['chips'], r['hosts']) == (16, 4)
  assert r['flops_per_chip'] == 2.5e9 and r['flops_per_step'] == 4e10  # 16 chips x 2.5 GFLOP
  mem['temp_size_in_bytes'] = 16 * GIB - 1250 + 1  # total 16 GiB + 1 byte: over v5e's HBM
  assert not aot.compile_train_step(tiny_config(), 'v5e:4x4')['fits']
  mem['temp_size_in_bytes'] -= 1  # exactly 16 GiB fits
  assert aot.compile_train_step(tiny_config(), 'v5e:4x4')['fits']


def test_two_slice_report_arithmetic(monkeypatch):
  """--num_slices=2: DCN bytes from the compiled HLO, seconds at 16 chips x 25 Gbit/s per
  v5e-16 slice, compute seconds at 40% of 197 TFLOP/s; numbers worked by hand."""
  from test_dcn import MEGASCALE  # pylint: disable=g-import-not-at-top
  mem = dict(argument_size_in_bytes=1000, output_size_in_bytes=600, alias_size_in_bytes=400,
             temp_size_in_bytes=3000, generated_code_size_in_bytes=50)
  compiled = _Fake(memory_analysis=lambda: _Fake(**mem), as_text=lambda: MEGASCALE,
                   cost_analysis=lambda: [{'flops': 7.88e12}])
  step = _Fake(lower=lambda state, batch: _Fake(compile=lambda: compiled))
  seen = {}

  def devices(t, n=1):
    seen['slices'] = n
    return [_Fake(device_kind='TPU v5 lite', process_index=i // 4, slice_index=i // 16)
            for i in range(t.num_chips * n)]

  def mesh(config, devices):
    seen['dcn_data'] = config.mesh.dcn_data
    return _Fake(shape={'data': len(devices), 'fsdp': 1},
                 devices=np.asarray(devices, dtype=object))
  monkeypatch.setattr(aot, 'tpu_devices', devices)
  monkeypatch.setattr(aot.sharding, 'make_mesh', mesh)
  monkeypatch.setattr(aot, 'build_train_step', lambda config, mesh: (step, {'params': {}}, {}))
  r = aot.compile_train_step(tiny_config(), 'v5e:4x4', num_slices=2)
  assert seen == {'slices': 2, 'dcn_data': 2} and (r['chips'], r['hosts']) == (32, 8)
  # MEGASCALE: 4 x 8192 (all-reduce) + 4 x 24576 (one-to-one) = 131072 bytes per slice
  assert r['dcn']['bytes_per_slice'] == 131072
  assert r['dcn_gbps_per_slice'] == 400  # 16 chips x 25 Gbit/s
  assert r['dcn_s'] == pytest.approx(131072 * 8 / 400e9)  # 2.62 us
  assert r['compute_s'] == pytest.approx(0.1)  # 7.88 TFLOP / (0.4 x 197 TFLOP/s)
  assert r['flops_per_step'] == 32 * 7.88e12
  text = aot.format_report(r)
  assert '2 x v5e:4x4 = 2 x v5litepod-16' in text and '32 chips on 8 hosts, 2 slices' in text
  assert ('DCN/step     0.1 MiB sent per slice (all-reduce x1, collective-permute x1 cross '
          'slices; the HLO has 2 DCN sends, 1 collectives)') in text
  assert '= 0.0 ms at 400 Gbit/s per slice (16 chips x 25 Gbit/s' in text
  assert 'compute/step 100.0 ms at 40% MFU' in text and 'on the 2 slices' in text
  with pytest.raises(ValueError, match=r'--num_slices=0: expected a whole number >= 1'):
    aot.compile_train_step(tiny_config(), 'v5e:4x4', num_slices=0)


def test_bad_num_slices_is_one_line_and_exit_2(capsys):
  assert aot.run(['aot', '--config=configs/deit_s.py', '--topology=v5e:4x4',
                  '--num_slices=0']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and '--num_slices=0: expected a whole number >= 1' in err[0], err
