"""Execution options (models.execution) and speed-motivated rewrites change no result.

Fused attention and rematerialisation give the explicit, stored computation's
outputs and gradients; the WeightedPool depthwise convolution written as shifted
products equals the grouped convolution. Tiny widths keep this fast.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stvit_jax import models
from stvit_jax.models import layers

TINY = {
    'deit_small': dict(embed_dim=32, num_heads=2, depth=2, img_size=32),
    'stvit_deit_small': dict(embed_dim=32, num_heads=2, depth=5, num_base_layers=1, img_size=96),
    'swin_small': dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), img_size=64,
                       window_size=2),
    'stvit_r_swin_small': dict(embed_dim=16, depths=(2, 2, 6, 2), num_heads=(1, 2, 2, 4),
                               img_size=224),
}


def images(size, batch=2):
  return jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32)


def loss_and_grads(model, x):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):  # fresh rng Variables in the trace, as the trainer's `apply` makes them
    logits, _ = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, rest))(x, train=True)
    return jnp.sum(logits ** 2)
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.slow  # stvit_r_swin_small at 224 px: ~100 s on 2 cores
@pytest.mark.parametrize('name', list(TINY))
def test_fused_attention_gives_the_explicit_outputs(name):
  size = TINY[name]['img_size']
  x = images(size, batch=1 if name == 'stvit_r_swin_small' else 2)
  explicit = models.create(name, **TINY[name])
  fused = models.create(name, attention='fused', **TINY[name])
  (a, aux_a), (b, aux_b) = explicit(x), fused(x)
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()))
  if 'stgm_attn' in aux_a:  # the visualizer's weights exist only in the explicit form
    assert all(w is not None for w in aux_a['stgm_attn'])
    assert all(w is None for w in aux_b['stgm_attn'])


@pytest.mark.slow  # ~65 s on 2 cores
@pytest.mark.parametrize('name, policy', [('stvit_deit_small', 'full'), ('swin_small', 'dots_saveable')])
def test_remat_gives_the_same_loss_and_gradients(name, policy):
  x = images(TINY[name]['img_size'], batch=2)
  base = loss_and_grads(models.create(name, **TINY[name]), x)
  remat = loss_and_grads(models.create(name, remat_policy=policy, **TINY[name]), x)
  np.testing.assert_allclose(remat[0], base[0], rtol=1e-6)
  for g, h in zip(jax.tree.leaves(remat[1]), jax.tree.leaves(base[1])):
    np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-6 * float(jnp.abs(h).max()) + 1e-12)


def test_remat_is_in_the_backward():
  model = models.create('deit_small', remat_policy='full', **TINY['deit_small'])
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss = lambda p: jnp.sum(nnx.merge(graphdef, p, jax.tree.map(jnp.asarray, rest))(  # noqa: E731
      images(32), train=True)[0])
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
  assert jaxpr.count('checkpoint[') + jaxpr.count('remat') >= 2  # one per block (depth 2)


def test_execution_options_are_model_options_and_checked():
  assert models.options('swin_small')['attention'] == 'explicit'
  assert models.options('stvit_deit_small')['remat_policy'] == 'none'
  with pytest.raises(ValueError, match="attention='flash'.*'explicit', 'fused'"):
    models.create('deit_small', attention='flash', **TINY['deit_small'])
  with pytest.raises(ValueError, match="remat_policy='some'.*'dots_saveable'"):
    models.create('deit_small', remat_policy='some', **TINY['deit_small'])


SCANNED = {  # each with a run of repeated blocks (Swin stage 3: 3 pairs) and drop path
    'deit_small': dict(embed_dim=32, num_heads=2, depth=4, img_size=32, drop_path_rate=0.2),
    'swin_small': dict(embed_dim=16, depths=(2, 2, 6, 2), num_heads=(1, 2, 2, 4), img_size=64,
                       window_size=2, drop_path_rate=0.2),
    'video_swin_tiny': dict(embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4),
                            window_size=(2, 3, 3), num_frames=4, img_size=48, num_classes=5,
                            drop_path_rate=0.2),
}


def scanned_input(name):
  kw = SCANNED[name]
  shape = ((2, kw['num_frames']) if 'num_frames' in kw else (2,)) + (kw['img_size'],) * 2 + (3,)
  return jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)


def train_step_results(model, x):
  """Loss, gradients and the rng stream state after one training forward."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    m = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, rest))
    return jnp.sum(m(x, train=True)[0] ** 2), nnx.state(m, nnx.Not(nnx.Param))
  (value, streams), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, grads, [jax.random.key_data(s) if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key)
                        else s for s in jax.tree.leaves(streams)]


@pytest.mark.slow  # ~60 s on 2 cores
@pytest.mark.parametrize('name, remat', [('deit_small', 'none'), ('swin_small', 'none'),
                                         ('swin_small', 'full'), ('video_swin_tiny', 'none')])
def test_scan_layers_gives_the_loops_loss_gradients_and_drop_path_masks(name, remat):
  x = scanned_input(name)
  loop = train_step_results(models.create(name, remat_policy=remat, **SCANNED[name]), x)
  scan = train_step_results(models.create(name, remat_policy=remat, scan_layers=True,
                                          **SCANNED[name]), x)
  np.testing.assert_allclose(scan[0], loop[0], rtol=1e-6)  # the same blocks were dropped
  for g, h in zip(jax.tree.leaves(scan[1]), jax.tree.leaves(loop[1])):
    np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-5 * float(jnp.abs(h).max()) + 1e-12)
  for a, b in zip(scan[2], loop[2]):  # every block's stream advanced as in the loop
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('name, scans', [('deit_small', 1), ('swin_small', 1),
                                         ('video_swin_tiny', 1)])
def test_scan_layers_scans_the_repeats_and_keeps_the_parameters(name, scans):
  x = scanned_input(name)
  loop = models.create(name, **SCANNED[name])
  scan = models.create(name, scan_layers=True, **SCANNED[name])
  assert jax.tree.structure(nnx.state(scan)) == jax.tree.structure(nnx.state(loop))  # names
  out = jax.jit(lambda x: scan(x)[0])(x)  # a model closed over by jit: nothing is mutated
  np.testing.assert_allclose(out, loop(x)[0], rtol=1e-5, atol=1e-6)
  # deit: block 0 has no drop path (rate 0), blocks 1-3 are one scan; swin / video:
  # stage 3's pairs are one scan, the 2-block stages stay loops
  assert str(jax.make_jaxpr(lambda x: scan(x)[0])(x)).count('scan[') == scans
  assert 'scan[' not in str(jax.make_jaxpr(lambda x: loop(x)[0])(x))


def test_scan_layers_is_checked():
  assert models.options('swin_base')['scan_layers'] is False
  with pytest.raises(ValueError, match="scan_layers='yes'.*True or False"):
    models.create('deit_small', scan_layers='yes', **TINY['deit_small'])


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_depthwise_conv_equals_the_grouped_convolution(dtype):
  conv = nnx.Conv(8, 8, (3, 3), padding=1, feature_group_count=8, dtype=dtype, rngs=nnx.Rngs(0))
  x = images(6)[..., :1] * jnp.arange(1, 9, dtype=jnp.float32)
  ref, out = conv(x), layers.depthwise_conv(conv, x)
  assert out.dtype == ref.dtype
  tol = 1e-6 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             rtol=tol, atol=tol * float(jnp.abs(ref).max()))


FAULTS = '''
import ctypes, resource, sys
from stvit_jax.runtime import cpu_allocator
kept = cpu_allocator.keep_freed_memory() if sys.argv[1] == 'keep' else None
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20  # above glibc's mmap threshold: by default an mmap block, unmapped on free
def touch():  # allocate, write every page, free: what each XLA:CPU call does to a temporary
  p = libc.malloc(size)
  ctypes.memset(p, 1, size)
  libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def test_kept_freed_memory_stops_per_call_page_faults():
  """A freed 64 MiB block is reused without new page faults once memory is kept.

  Deterministic counts (one thread, plain malloc): the model-level effect on
  XLA:CPU's temporaries is measured by `python -m stvit_jax.tools.benchmark`, not here."""
  import os, subprocess, sys  # noqa: E401
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env.pop('GLIBC_TUNABLES', None)
  out = {mode: subprocess.run([sys.executable, '-c', FAULTS, mode], env=env, check=True,
                              capture_output=True, text=True).stdout.split()
         for mode in ('keep', 'default')}
  assert out['keep'][0] == 'True'
  pages = (64 << 20) // 4096
  assert int(out['default'][1]) >= pages * 0.9  # mmap'd anew: every 4 KiB page faults
  assert int(out['keep'][1]) < pages * 0.1  # the kept heap is reused