"""Family records (what tools ask instead of matching name prefixes), parameter names and
the one head-replacement rule."""
import dataclasses

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from stvit_jax import models, names
from stvit_jax.models import registry


def test_every_model_belongs_to_one_family_named_by_its_prefix():
  for name in models.names():
    fam = models.family(name)
    assert name in fam.model_names() and name.startswith(f'{fam.name}_')
  assert models.family('stvit_deit') is models.family('stvit_deit_small')
  with pytest.raises(ValueError, match='valid names: .*stvit_deit_small'):
    models.family('resnet50')


def test_records_drive_the_tools():
  stgm = {f.name: f.stgm for f in models.FAMILIES.values()}
  assert {k: v for k, v in stgm.items() if v} == {
      'stvit_deit': 'global', 'stvit_r_swin': 'windowed', 'stvit_swin': 'windowed',
      'stvit_video_swin': 'windowed', 'stvit_r_video_swin': 'windowed'}
  assert {f.name: f.dense_counterpart for f in models.FAMILIES.values() if f.dense_counterpart} \
      == {'stvit_deit': 'deit', 'stvit_r_swin': 'swin', 'stvit_swin': 'swin',
          'stvit_video_swin': 'video_swin', 'stvit_r_video_swin': 'video_swin'}
  assert list(models.family('swin').layouts) == ['microsoft', 'timm']
  assert list(models.family('stvit_swin_tiny').layouts) == ['microsoft']
  assert [f.name for f in models.FAMILIES.values() if f.backbone] == ['stvit_r_swin']
  kinds = {f.name: f.input_kind for f in models.FAMILIES.values()}
  assert kinds['stvit_deit'] == kinds['stvit_r_swin'] == 'image'
  assert kinds['video_swin'] == 'video' and models.family('video_swin').input_frames == 32


def test_example_inputs_follow_the_input_kind():
  assert models.example_input('stvit_deit_small', 3).shape == (3, 224, 224, 3)
  assert models.example_input('video_swin_tiny', 2).shape == (2, 32, 224, 224, 3)
  tiny = nnx.eval_shape(lambda: models.create('deit_tiny', img_size=32, patch_size=8))
  assert models.example_input(tiny, 2).shape == (2, 32, 32, 3)  # the module's own img_size
  clips = dataclasses.replace(models.family('deit'), name='clip_deit', input_kind='video',
                              input_frames=8)
  assert clips.example_input(2, 64) == jax.ShapeDtypeStruct((2, 8, 64, 64, 3), jnp.float32)
  with pytest.raises(ValueError, match="input_kind='audio' is not one of"):
    dataclasses.replace(clips, input_kind='audio')


def test_backbone_keyword_and_its_former_name():
  a = nnx.eval_shape(lambda: models.create('stvit_r_swin_tiny', backbone=True))
  b = nnx.eval_shape(lambda: models.create('stvit_r_swin_tiny', dense=True))
  assert type(a) is type(b) is registry.FAMILIES['stvit_r_swin'].backbone
  with pytest.raises(ValueError, match='backbone=True exists only for stvit_r_swin_tiny'):
    models.create('deit_small', backbone=True)


def test_one_naming_helper_two_spellings():
  params = nnx.state(nnx.eval_shape(lambda: models.create('deit_tiny', depth=1)), nnx.Param)
  opt = jax.eval_shape(optax.adamw(1e-3).init, params)
  flat = names.flatten({'params': params, 'opt_state': opt})
  assert 'params/blocks/0/attn/qkv/kernel' in flat
  assert 'opt_state/0/mu/blocks/0/attn/qkv/kernel' in flat  # optimizer state carries the path
  assert names.path_name(jax.tree_util.tree_leaves_with_path(params)[0][0], '.') == \
      'blocks.0.attn.proj.bias'
  model = nnx.eval_shape(lambda: models.create('deit_tiny', depth=1))
  assert 'params/blocks.0.attn.qkv.kernel' in names.weight_names(model)


@pytest.mark.parametrize('name,source,model,replaced', [
    ('params/head.kernel', (192, 1000), (192, 10), True),     # another class count
    ('head/bias', (1000,), (10,), True),
    ('params/head_dist.kernel', (192, 1000), (192, 10), True),
    ('params/head.kernel', (384, 1000), (192, 10), False),    # another width: an error
    ('params/head.kernel', (192, 10), (192, 10), False),      # the same: loaded
    ('params/blocks.0.mlp.fc2.bias', (1000,), (10,), False),  # not a head
])
def test_head_replacement_rule(name, source, model, replaced):
  assert names.head_is_replaced(name, source, model) is replaced
