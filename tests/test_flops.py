"""MAC counting on small hand-checkable modules (no dependency on the model zoo)."""
import json
import sys
import types

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from stvit_jax.tools import flops


def sds(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_linear_counts_in_times_out_per_token():
  layer = nnx.Linear(16, 32, rngs=nnx.Rngs(0))
  # bias add and the surrounding gelu count zero.
  macs = flops.count_macs(lambda x: jax.nn.gelu(layer(x)), sds(2, 10, 16))
  assert macs == 2 * 10 * 16 * 32


def test_attention_qk_and_av():
  b, h, n, d = 2, 3, 7, 8

  def attn(q, k, v):
    a = jax.nn.softmax(jnp.einsum('bhqd,bhkd->bhqk', q, k) * d**-0.5, axis=-1)
    return a @ v

  macs = flops.count_macs(attn, sds(b, h, n, d), sds(b, h, n, d), sds(b, h, n, d))
  assert macs == 2 * (b * h * n * n * d)  # q@k^T and attn@v, each B*H*N*N*D


def test_strided_padded_conv():
  conv = nnx.Conv(3, 8, (3, 3), strides=2, padding=1, rngs=nnx.Rngs(0))
  # 15x15 input, pad 1, stride 2 -> floor((15 + 2 - 3) / 2) + 1 = 8 x 8 outputs.
  macs = flops.count_macs(conv, sds(1, 15, 15, 3))
  assert macs == 8 * 8 * 8 * (3 * 3 * 3)


def test_depthwise_conv_divides_by_groups():
  c = 12
  conv = nnx.Conv(c, c, (3, 3), padding='SAME', feature_group_count=c, rngs=nnx.Rngs(0))
  macs = flops.count_macs(conv, sds(2, 5, 5, c))
  assert macs == 2 * 5 * 5 * c * (3 * 3 * 1)


def test_nchw_conv_dimension_numbers():
  x, w = sds(1, 4, 6, 6), sds(5, 4, 3, 3)  # NCHW input, OIHW kernel
  fn = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID')
  assert flops.count_macs(fn, x, w) == 5 * 4 * 4 * (4 * 3 * 3)


def test_scan_multiplies_body_by_length():
  w = sds(3, 16, 16)
  one = 4 * 16 * 16

  def stack(ws, x):
    return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, ws)[0]

  assert flops.count_macs(stack, w, sds(4, 16)) == 3 * one


def test_jit_and_checkpoint_counted_once():
  def inner(x, w):
    return jax.nn.relu(x @ w)

  x, w = sds(4, 16), sds(16, 16)
  plain = flops.count_macs(inner, x, w)
  assert plain == 4 * 16 * 16
  assert flops.count_macs(jax.jit(inner), x, w) == plain
  assert flops.count_macs(jax.checkpoint(inner), x, w) == plain
  assert flops.count_macs(jax.jit(jax.checkpoint(jax.jit(inner))), x, w) == plain
  # nnx.remat, as models use it, goes through the same primitives.
  layer = nnx.Linear(16, 16, rngs=nnx.Rngs(0))
  assert flops.count_macs(nnx.remat(lambda m, x: m(x)), layer, x) == plain


def test_cond_takes_the_most_expensive_branch():
  def fn(p, x, w):
    return jax.lax.cond(p, lambda: x @ w @ w, lambda: x @ w)

  macs = flops.count_macs(fn, jax.ShapeDtypeStruct((), jnp.bool_), sds(4, 16), sds(16, 16))
  assert macs == 2 * 4 * 16 * 16


def test_while_loop_raises():
  def fn(x):
    return jax.lax.while_loop(lambda h: h.sum() < 10, lambda h: h @ h, x)

  with pytest.raises(ValueError, match='while loop'):
    flops.count_macs(fn, sds(4, 4))


def test_static_kwargs_are_bound():
  def fn(x, *, double):
    return x @ x @ x if double else x @ x

  single = flops.count_macs(fn, sds(4, 4), double=False)
  assert single == 4 * 4 * 4
  assert flops.count_macs(fn, sds(4, 4), double=True) == 2 * single


class TinyNet(nnx.Module):
  """Conv stem + BatchNorm + head; returns (logits, aux) like the real models."""

  def __init__(self, num_classes=10, *, rngs):
    self.stem = nnx.Conv(3, 8, (4, 4), strides=4, padding='VALID', rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, num_classes, rngs=rngs)

  def __call__(self, images, *, train):
    x = self.norm(self.stem(images), use_running_average=not train)
    feats = x.mean(axis=(1, 2))
    return self.head(feats), {'features': feats}


def test_count_params_excludes_batch_stats():
  model = TinyNet(rngs=nnx.Rngs(0))
  conv = 4 * 4 * 3 * 8 + 8
  norm = 8 + 8  # scale and bias; running mean/var are BatchStat
  head = 8 * 10 + 10
  assert flops.count_params(model) == conv + norm + head
  # Abstract models (nnx.eval_shape) count the same, without allocating.
  assert flops.count_params(nnx.eval_shape(lambda: TinyNet(rngs=nnx.Rngs(0)))) == conv + norm + head


@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('abstract', [True, False])
def test_model_macs_is_per_image(batch, abstract):
  make = lambda: TinyNet(rngs=nnx.Rngs(0))
  model = nnx.eval_shape(make) if abstract else make()
  per_image = (8 * 8 * 8) * (4 * 4 * 3) + 8 * 10  # 32/4 = 8x8 stem outputs, then head
  assert flops.model_macs(model, image_size=32, batch=batch) == per_image


def test_model_macs_rejects_bad_batch():
  with pytest.raises(ValueError, match='batch=0'):
    flops.model_macs(TinyNet(rngs=nnx.Rngs(0)), image_size=32, batch=0)


@pytest.fixture
def fake_registry(monkeypatch):
  """Stands in for stvit_jax.models so the CLI is tested on its own."""
  import stvit_jax
  table = {'tiny_a': 10, 'tiny_b_longer_name': 1000}

  def create(name, *, num_classes=1000, rngs):
    if name not in table:
      raise ValueError(f'unknown model {name!r}; valid: {sorted(table)}')
    return TinyNet(num_classes, rngs=rngs)

  fake = types.SimpleNamespace(create=create, names=lambda: sorted(table))
  monkeypatch.setitem(sys.modules, 'stvit_jax.models', fake)
  monkeypatch.setattr(stvit_jax, 'models', fake, raising=False)


def test_cli_table_and_json(fake_registry, capsys, tmp_path):
  out = tmp_path / 'macs.json'
  flops.main(['--image_size', '32', '--num_classes', '1000', '--json', str(out)])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].split() == ['model', 'params', 'GMACs']
  assert [l.split()[0] for l in lines[1:]] == ['tiny_a', 'tiny_b_longer_name']
  params = 4 * 4 * 3 * 8 + 8 + 16 + 8 * 1000 + 1000
  assert lines[1].split()[1] == f'{params:,}'
  assert len({len(l) for l in lines}) == 1  # aligned columns
  saved = json.loads(out.read_text())
  assert saved['tiny_a'] == {'params': params, 'macs': 8 * 8 * 8 * 48 + 8 * 1000,
                             'image_size': 32}


def test_cli_unknown_model_lists_valid_names(fake_registry):
  with pytest.raises(SystemExit, match="valid: \\['tiny_a', 'tiny_b_longer_name'\\]"):
    flops.main(['nope'])
