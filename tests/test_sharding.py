"""Mesh construction and regex partition rules (no devices needed: abstract meshes)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from stvit_jax import models
from stvit_jax.train import optim
from stvit_jax.runtime import sharding


def mesh(data, fsdp):
  return AbstractMesh((data, fsdp), sharding.AXES)


def test_fsdp_shards_the_largest_divisible_dimension():
  m = mesh(2, 4)
  assert sharding.spec_for((384, 1152), 'fsdp', m) == P(None, 'fsdp')
  assert sharding.spec_for((1152, 384), 'fsdp', m) == P('fsdp', None)
  assert sharding.spec_for((6, 10), 'fsdp', m) == P()  # nothing divisible: replicated
  assert sharding.spec_for((), 'fsdp', m) == P()
  assert sharding.spec_for((384, 1152), 'replicate', m) == P()
  assert sharding.spec_for((384, 1152), 'fsdp', mesh(8, 1)) == P()
  with pytest.raises(ValueError, match="'tp' is not one of"):
    sharding.spec_for((4,), 'tp', m)


def test_rules_match_whole_paths_in_params_and_optimizer_state():
  model = nnx.eval_shape(lambda: models.create('stvit_deit_tiny', depth=3, num_base_layers=1))
  params = nnx.state(model, nnx.Param)
  config = ml_collections.ConfigDict({'batch_size': 512, 'optim': {
      'lr': 5e-4, 'lr_base_batch': 512, 'warmup_lr': 1e-6, 'min_lr': 1e-5, 'b1': 0.9,
      'b2': 0.999, 'eps': 1e-8, 'weight_decay': 0.05, 'grad_clip_norm': 5.0}})
  opt_state = jax.eval_shape(optim.make(config, 1e-3).init, params)
  rules = ((r'.*pos_embed', 'replicate'), (r'(.*/)?blocks/0/.*', 'replicate'), ('.*', 'fsdp'))
  shardings = sharding.tree_shardings({'params': params, 'opt_state': opt_state}, mesh(2, 4),
                                      rules)
  p = shardings['params']
  assert p['pos_embed'].get_value().spec == P()
  assert p['blocks'][0]['attn']['qkv']['kernel'].get_value().spec == P()
  assert p['blocks'][1]['attn']['q']['kernel'].get_value().spec == P('fsdp', None)  # (192, 192)
  assert p['head']['kernel'].get_value().spec == P(None, 'fsdp')  # (192, 1000)
  mu = shardings['opt_state'][1][0].mu  # clip, then adamw's ScaleByAdamState
  assert mu['blocks'][0]['attn']['qkv']['kernel'].get_value().spec == P()
  assert mu['blocks'][2]['mlp']['fc1']['kernel'].get_value().spec == P(None, 'fsdp')
  with pytest.raises(ValueError, match="no sharding rule matches 'global_init'"):
    sharding.tree_shardings(params, mesh(2, 4), ((r'blocks/.*', 'fsdp'),))


def test_mesh_shape_from_config():
  def sizes(data, fsdp):
    return sharding.mesh_shape(ml_collections.ConfigDict({'mesh': {'data': data, 'fsdp': fsdp}}), 8)

  assert sizes(-1, 1) == (8, 1)
  assert sizes(2, -1) == (2, 4)
  assert sizes(4, 2) == (4, 2)
  with pytest.raises(ValueError, match='must use all 8 devices'):
    sizes(2, 2)
  with pytest.raises(ValueError, match='does not divide'):
    sizes(3, -1)
  with pytest.raises(ValueError, match='at most one'):
    sizes(-1, -1)


def test_batch_divisibility_is_checked():
  m = mesh(4, 2)
  sharding.check_batch('batch_size', 64, m)
  with pytest.raises(ValueError, match=r'config.eval_batch_size=12 .* devices \(8\)'):
    sharding.check_batch('eval_batch_size', 12, m)


def test_to_global_on_one_device():
  config = ml_collections.ConfigDict({'mesh': {'data': -1, 'fsdp': 1}})
  m = sharding.make_mesh(config)
  batch = sharding.to_global({'x': np.arange(4.0)}, m)
  assert isinstance(batch['x'], jax.Array) and batch['x'].sharding.spec == P(sharding.AXES)
  np.testing.assert_array_equal(batch['x'], jnp.arange(4.0))
