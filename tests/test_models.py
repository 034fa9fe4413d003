"""Model zoo: exact sizes and costs, gradients, dtypes, errors.

Full-size models are only built abstractly (`nnx.eval_shape`) or run once;
behaviour is checked on tiny widths so the file stays fast on 2 CPU cores.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stvit_jax.tools import flops
from stvit_jax import models

# (trainable params, GMACs at 224^2, relative tolerance on GMACs)
REFERENCE = {
    'deit_small': (22_050_664, 4.6, 0.02),            # timm deit_small_patch16_224
    'stvit_deit_small': (None, 1.91, 0.03),           # paper Table 1
    'swin_small': (49_606_258, 8.7, 0.02),            # timm swin_small_patch4_window7_224
    'stvit_r_swin_small': (49_625_518, 5.83, 0.02),   # official checkpoint / paper
    'stvit_r_swin_base': (87_812_336, 10.26, 0.02),
    'deit_tiny': (5_717_416, 1.3, 0.04),
    'deit_base': (86_567_656, 17.6, 0.02),
    'stvit_deit_tiny': (None, 0.52, 0.03),
    'stvit_deit_base': (None, 7.3, 0.03),
}

TINY = {  # small widths that keep every structural feature of the family
    'deit': dict(embed_dim=32, num_heads=2, depth=4, img_size=64),
    'stvit_deit': dict(embed_dim=32, num_heads=2, depth=6, num_base_layers=2, img_size=96),
    'swin': dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), img_size=64,
                 window_size=4),
    'stvit_r_swin': dict(embed_dim=16, depths=(2, 2, 6, 2), num_heads=(1, 2, 2, 4)),
    'stvit_swin': dict(embed_dim=16, depths=(2, 2, 5, 2), num_heads=(1, 2, 2, 4)),
}


def abstract(name, **kw):
  return nnx.eval_shape(lambda: models.create(name, **kw))


@pytest.mark.slow  # full-size models, traced
@pytest.mark.parametrize('name', sorted(REFERENCE))
def test_params_and_gmacs_match_the_paper(name):
  params, gmacs, tol = REFERENCE[name]
  model = abstract(name)
  if params is not None:
    assert flops.count_params(model) == params
  assert flops.model_macs(model) / 1e9 == pytest.approx(gmacs, rel=tol)


@pytest.mark.slow  # full-size models, traced
def test_every_registered_model_builds_and_counts():
  for name in models.names():
    model = abstract(name, num_classes=10)
    assert flops.count_params(model) > 0
    assert flops.model_macs(model) > 0


@pytest.mark.slow  # full-size models, traced
def test_stvit_deit_ablation_costs():
  """Paper ablation: STGM after 3 / 4 / 8 base layers costs 1.56 / 1.91 / 3.30 G."""
  for base, gmacs in ((3, 1.56), (4, 1.91), (8, 3.30)):
    macs = flops.model_macs(abstract('stvit_deit_small', num_base_layers=base))
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.03), base


def image_batch(size, batch=2, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def run(model, images, train=False):
  """One jitted forward (compiling beats eager op-by-op dispatch for these graphs)."""
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda state, x: nnx.merge(graphdef, state, copy=True)(x, train=train))
  return fwd(state, images)


def tiny(family, variant='', **kw):
  name = f'{family}_small{variant}'
  return models.create(name, num_classes=7, **{**TINY[family], **kw}), TINY[family].get('img_size', 224)


TINY_CASES = [
    ('deit', {}), ('deit', {'distilled': True}),
    ('stvit_deit', {}), ('stvit_deit', {'pooling': 'avg', 'class_token': True}),
    ('stvit_deit', {'pooling': 'max', 'stgm_depth': 3, 'num_semantic': 9}),
    ('swin', {}), ('stvit_r_swin', {'use_global_init': True}),
    ('stvit_swin', {}), ('stvit_swin', {'tokens_per_window': 16}),
]


@pytest.mark.parametrize('family,kw', TINY_CASES)
def test_every_parameter_gets_a_gradient(family, kw):
  model, size = tiny(family, drop_path_rate=0.0, **kw)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  images = image_batch(size)
  labels = jnp.arange(2) % 7

  def loss_fn(params, rest):
    # copy=True: a merged model may mutate its BatchStat / rng counters inside the trace.
    logits, _ = nnx.merge(graphdef, params, rest, copy=True)(images, train=True)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  grads = jax.jit(jax.grad(loss_fn))(params, rest)
  dead = ['.'.join(map(str, path)) for path, g in nnx.to_flat_state(grads)
          if not np.any(np.asarray(g.get_value()) != 0)]
  assert not dead, f'parameters without gradient: {dead}'
  if kw.get('use_global_init'):
    assert any('global_init' in '.'.join(map(str, p)) for p, _ in nnx.to_flat_state(grads))


@pytest.mark.parametrize('family', ['stvit_deit', 'stvit_r_swin', 'swin'])
def test_bfloat16_logits_close_to_float32(family):
  model32, size = tiny(family)
  model16, _ = tiny(family, dtype='bfloat16')
  nnx.update(model16, nnx.state(model32))  # same weights, other compute dtype
  images = image_batch(size)
  l32, _ = run(model32, images)
  l16, _ = run(model16, images)
  assert l16.dtype == jnp.float32  # heads run in float32
  assert jax.tree.leaves(nnx.state(model16, nnx.Param))[0].dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(l32)))
  assert float(jnp.max(jnp.abs(l16 - l32))) < 0.05 * scale
  assert float(jnp.max(jnp.abs(l16 - l32))) > 0  # bfloat16 rounding shows: not the same program


def equations(jaxpr):
  """Every equation of a jaxpr, also inside nested ones (jit, custom_jvp, scan, ...)."""
  for eqn in getattr(jaxpr, 'jaxpr', jaxpr).eqns:
    yield eqn
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(item, 'eqns') or hasattr(getattr(item, 'jaxpr', None), 'eqns'):
          yield from equations(item)


@pytest.mark.parametrize('family', ['deit', 'stvit_deit', 'swin', 'stvit_r_swin', 'stvit_swin'])
def test_bfloat16_models_multiply_in_bfloat16(family):
  """docs/models.md: dtype='bfloat16' makes the matmuls (and convs) bfloat16; the head
  alone stays float32 (its output is the (batch 2, 7 classes) logits)."""
  def products(dtype):
    model, size = tiny(family, dtype=dtype)
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda state, x: nnx.merge(graphdef, state)(x, train=False)[0])(
        state, image_batch(size))
    return [(tuple(str(v.aval.dtype) for v in e.invars), e.outvars[0].aval.shape)
            for e in equations(jaxpr)
            if e.primitive.name in ('dot_general', 'conv_general_dilated')]
  bf16 = products('bfloat16')
  head = (('float32', 'float32'), (2, 7))
  assert bf16.count(head) == 1, bf16
  others = [dtypes for dtypes, shape in bf16 if (dtypes, shape) != head]
  assert len(others) >= 10 and set(others) == {('bfloat16', 'bfloat16')}, set(others)
  # float32 (the control): the same products, none in bfloat16
  f32 = products('float32')
  assert len(f32) == len(bf16) and {dtypes for dtypes, _ in f32} == {('float32', 'float32')}


@pytest.mark.parametrize('family', ['stvit_deit', 'stvit_r_swin'])
def test_stochastic_depth_only_in_training(family):
  model, size = tiny(family, drop_path_rate=0.5)
  images = image_batch(size)
  eval_a, _ = model(images, train=False)
  eval_b, _ = model(images, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a, _ = model(images, train=True)
  train_b, _ = model(images, train=True)  # the rng stream advances between calls
  assert not np.allclose(train_a, train_b)
  assert not np.allclose(train_a, eval_a)


def test_aux_carries_semantic_tokens_attention_and_stage_features():
  model, size = tiny('stvit_deit')
  _, aux = run(model, image_batch(size))
  grid = size // 16
  assert aux['semantic_tokens'].shape == (2, 16, 32)
  assert aux['stgm_attn'][0].shape == (2, 2, 16, grid * grid)
  assert aux['stgm_attn'][1].shape == (2, 2, 16, 16 + grid * grid)
  np.testing.assert_allclose(aux['stgm_attn'][0].sum(-1), 1.0, rtol=1e-5)
  assert aux['pool_weights'].shape == (2, 16, 4)  # 6x6 grid padded to 8x8: 2x2 per window

  model, _ = tiny('stvit_r_swin')
  _, aux = run(model, image_batch(224, batch=1))
  assert [f.shape for f in aux['stage_features']] == [
      (1, 56, 56, 16), (1, 28, 28, 32), (1, 14, 14, 64), (1, 7, 7, 128)]
  assert aux['stgm_attn'][0].shape == (1, 4, 2, 9, 109)
  assert aux['stgm_attn'][1].shape == (1, 2, 36, 36 + 196)
  assert aux['semantic_tokens'][0].shape == (1, 36, 64)


def test_weighted_pooling_padding_gets_no_weight():
  model, size = tiny('stvit_deit')
  _, aux = run(model, image_batch(size))
  w = np.asarray(aux['pool_weights'])  # 6x6 grid padded by 1 to 8x8; windows 2x2
  # Window 0 covers padded rows/cols 0-1: only (1, 1) is a real token.
  np.testing.assert_allclose(w[:, 0], [[0, 0, 0, 1]] * 2, atol=1e-30)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize('call,message', [
    (lambda: models.create('stvit_r_swin_small', img_size=448), 'img_size=224, or .*dense=True'),
    (lambda: models.create('swin_small', dense=True), 'dense=True exists only for stvit_r_swin'),
    (lambda: models.create('stvit_deit_small', num_semantic=10), 'num_semantic=10'),
    (lambda: models.create('swin_small', img_size=256), 'window_size=7'),
    (lambda: models.create('stvit_deit_small', pooling='median'), "'weighted'"),
    (lambda: models.create('stvit_swin_small', tokens_per_window=12), 'tokens_per_window=12'),
    (lambda: models.create('stvit_deit_small', num_base_layers=11), 'num_base_layers=11'),
    (lambda: models.create('deit_huge'), 'valid names'),
    (lambda: models.create('deit_small', window_size=7), 'valid options'),
    (lambda: models.create('deit_small', dtype='fp8'), "'bfloat16'"),
])
def test_unsupported_configurations_name_the_field(call, message):
  with pytest.raises(ValueError, match=message):
    nnx.eval_shape(call)


def test_wrong_image_size_at_call_time_names_img_size():
  model, _ = tiny('stvit_r_swin')
  with pytest.raises(ValueError, match='img_size'):
    model(image_batch(256, batch=1))
