"""Video Swin checkpoint import (three layouts), STViT-per-frame weights, and
2D -> 3D inflation. Fixtures: scripts/video_swin_parity.py --fixtures (the
original PyTorch Video Swin code, random weights, tiny width)."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpy_reference import apply
from stvit_jax.tools import convert as convert_tool
from stvit_jax.weights import convert
from stvit_jax.weights import factory
from stvit_jax.weights import store
from stvit_jax.weights import convert_video

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))  # both fixtures


def load(name):
  with np.load(os.path.join(FIXTURES, name)) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope='module')
def original():
  return load('video_swin_tiny.npz')


@pytest.fixture(scope='module')
def converted(original):
  model, conversion, layout = convert.convert('video_swin_tiny', original, **TINY)
  assert layout == 'original' and not conversion.fresh
  assert model.head.out_features == 10  # from cls_head.fc_cls
  return model


@pytest.mark.parametrize('io', ['video_swin_tiny.io.npz', 'video_swin_tiny_small_clip.io.npz'])
def test_fixture_logits_match_the_original_code(converted, io):
  data = load(io)
  clip = jnp.asarray(data['input'].astype(np.float32).transpose(0, 2, 3, 4, 1))
  logits, _ = apply(converted, clip, train=False)
  scale = np.abs(data['logits']).max()
  assert np.abs(np.asarray(logits) - data['logits']).max() <= 1e-4 * scale


def mmaction2(sd):
  return {re.sub(r'^backbone\.norm\.', 'backbone.norm3.', k): v for k, v in sd.items()}


def torchvision(sd):
  def rename(k):
    k = re.sub(r'^cls_head\.fc_cls\.', 'head.', k)
    k = re.sub(r'^backbone\.', '', k)
    k = re.sub(r'^layers\.(\d)\.blocks\.(\d+)\.',
               lambda m: f'features.{2 * int(m.group(1))}.{m.group(2)}.', k)
    k = re.sub(r'^layers\.(\d)\.downsample\.', lambda m: f'features.{2 * int(m.group(1)) + 1}.', k)
    return k.replace('mlp.fc1.', 'mlp.0.').replace('mlp.fc2.', 'mlp.3.')
  return {rename(k): v for k, v in sd.items()}


@pytest.mark.parametrize('layout,to', [('mmaction2', mmaction2), ('torchvision', torchvision)])
def test_other_layouts_give_the_same_weights(original, converted, layout, to):
  conversion, _, found = convert.plan('video_swin_tiny', to(original), **TINY)
  assert found == layout
  want = store.flat_variables(converted)
  assert sorted(conversion.arrays) == sorted(want)
  for k, v in conversion.arrays.items():
    np.testing.assert_array_equal(v, np.asarray(want[k]))


def test_another_family_or_layout_lists_the_unmatched_names(original):
  image = load('swin_tiny.microsoft.npz')
  with pytest.raises(convert.ConversionError, match="no 'backbone.*'.*--inflate"):
    convert.plan('video_swin_tiny', image, **TINY)
  with pytest.raises(convert.ConversionError) as err:
    convert.plan('swin_tiny', original, layout='microsoft', **TINY)
  assert 'unexpected: backbone.patch_embed.proj.weight' in str(err.value)
  broken = dict(original)
  broken['backbone.layers.0.blocks.0.attn.qkvv.weight'] = broken.pop(
      'backbone.layers.0.blocks.0.attn.qkv.weight')
  with pytest.raises(convert.ConversionError) as err:
    convert.plan('video_swin_tiny', broken, **TINY)
  assert 'unexpected: backbone.layers.0.blocks.0.attn.qkvv.weight' in str(err.value)
  assert 'missing: params/layers.0.blocks.0.attn.qkv.kernel' in str(err.value)


def test_stvit_layers_take_their_swin_blocks_weights(original):
  """A Video Swin checkpoint into STViT-per-frame: q/kv split from qkv, fresh LayerScales."""
  sd = dict(original)
  # stage 3 needs 4 blocks for stgm_after=1 (STGM 2 blocks + local + global);
  # the fixture has 2: give the model depths[2]=2 + recovery-free minimum by
  # duplicating stage-3 blocks 0, 1 as 2, 3.
  for k in list(sd):
    m = re.match(r'backbone\.layers\.2\.blocks\.([01])\.(.*)', k)
    if m:
      sd[f'backbone.layers.2.blocks.{int(m.group(1)) + 2}.{m.group(2)}'] = sd[k]
  conversion, _, _ = convert.plan('stvit_video_swin_tiny', sd, stgm_after=1,
                                  **{**TINY, 'depths': (2, 2, 4, 2)})
  q = conversion.arrays['params/layers.2.blocks.1.attn.q.kernel']
  kv = conversion.arrays['params/layers.2.blocks.1.attn.kv.kernel']
  qkv = sd['backbone.layers.2.blocks.1.attn.qkv.weight']
  np.testing.assert_array_equal(q, qkv[:32].T)
  np.testing.assert_array_equal(kv, qkv[32:].T)
  assert 'params/layers.2.blocks.0.attn.relative_position_bias_table' in conversion.arrays
  assert all('layer_scale' in f for f in conversion.fresh) and len(conversion.fresh) == 6
  assert sum('unused by the STViT layer' in n for n in conversion.notes) == 3


def test_inflation_rule():
  image_sd = load('swin_tiny.microsoft.npz')
  sd = convert_video.inflate(image_sd)
  k = image_sd['patch_embed.proj.weight']
  np.testing.assert_array_equal(sd['backbone.patch_embed.proj.weight'],
                                np.stack([k, k], 2) / 2)
  table = image_sd['layers.0.blocks.1.attn.relative_position_bias_table']
  big = sd['backbone.layers.0.blocks.1.attn.relative_position_bias_table']
  assert big.shape == (15 * 169, table.shape[1])
  np.testing.assert_array_equal(big[169 * 7:169 * 8], table)  # temporal offset 0
  assert not any(n.startswith('backbone.head') for n in sd)
  with pytest.raises(ValueError, match="2D 'patch_embed.proj.weight'"):
    convert_video.inflate(sd)


def test_identical_frames_give_the_image_models_features():
  """Inflated weights on a clip of identical frames reproduce the image Swin.

  Exact up to float error because (a) every temporal copy of a key has the same
  logit: the bias table is the 2D one repeated over temporal offsets, and (b) no
  temporal padding: D = 4 fits one (clamped) window. A bias table that differs
  across temporal offsets, or zero-padded time steps (D = 9 -> 16; the padded
  keys are zeros, not copies), break it; both are checked to matter."""
  image_sd = load('swin_tiny.microsoft.npz')
  image, _, _ = convert.convert('swin_tiny', image_sd, **TINY)
  video, conversion, _ = convert.convert('video_swin_tiny', convert_video.inflate(image_sd),
                                         num_classes=10, **TINY)
  assert conversion.fresh == ['params/head.bias', 'params/head.kernel']
  img = jax.random.normal(jax.random.key(0), (1, 224, 224, 3))
  _, want = apply(image, img, train=False)
  clip = jnp.repeat(img[:, None], 8, axis=1)  # 8 frames -> D = 4 temporal tokens
  _, got = apply(video, clip, train=False)
  for w, g in zip(want['stage_features'], got['stage_features']):
    g = np.asarray(g)
    for t in range(g.shape[1]):
      np.testing.assert_allclose(g[:, t], np.asarray(w), rtol=1e-4, atol=1e-4)
  # named effects: temporal padding (18 frames -> D = 9, padded to 16)
  _, padded = apply(video, jnp.repeat(img[:, None], 18, axis=1), train=False)
  # the last temporal token's window holds 1 real and 7 zero-padded time steps
  assert np.abs(np.asarray(padded['stage_features'][0][:, -1]) -
                np.asarray(want['stage_features'][0])).max() > 1e-3
  # ... and a bias table that depends on the temporal offset
  table = video.layers[0].blocks[0].attn.relative_position_bias_table
  # Varying over spatial offsets: a constant added to every key of one time step leaves
  # the output unchanged (the frames are identical, so those keys carry the same values).
  noise = jax.random.normal(jax.random.key(1), (169, table.shape[1]))
  table.set_value(jnp.asarray(table[...]).at[169 * 8:169 * 9].add(noise))  # temporal offset +1
  _, biased = apply(video, clip, train=False)
  assert np.abs(np.asarray(biased['stage_features'][0][:, 0]) -
                np.asarray(want['stage_features'][0])).max() > 1e-3


def test_cli_inflate_from_a_converted_image_directory(tmp_path, capsys):
  image_dir, video_dir = tmp_path / 'image', tmp_path / 'video'
  sets = [f'--set={k}={v}' for k, v in TINY.items()]
  convert_tool.main(['--model', 'swin_tiny', '--src', os.path.join(FIXTURES, 'swin_tiny.microsoft.npz'),
                '--out', str(image_dir), *sets])
  convert_tool.main(['--model', 'video_swin_tiny', '--src', str(image_dir), '--inflate',
                '--num_classes', '7', '--out', str(video_dir), *sets])
  model = factory.from_directory(str(video_dir))
  assert model.head.out_features == 7 and store.read_provenance(str(video_dir))['source'][
      'inflated']
  logits, _ = apply(model, jnp.zeros((1, 4, 224, 224, 3)), train=False)
  assert logits.shape == (1, 7)
  # The values, against the PyTorch source permuted by hand: kernels (out, in) -> (in, out);
  # the patch conv (out, 3, 4, 4) -> (kh, kw, in, out), copied to both temporal taps and
  # halved; the (169, heads) bias table repeated for each of the 15 temporal offsets.
  src = load('swin_tiny.microsoft.npz')
  value = lambda path: np.asarray(nnx_param(model, path))
  k = src['patch_embed.proj.weight'].transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(value('patch_embed.proj.kernel'), np.stack([k / 2, k / 2]))
  for ours, theirs in (('layers.0.blocks.1.attn.qkv.kernel', 'layers.0.blocks.1.attn.qkv.weight'),
                       ('layers.2.blocks.0.mlp.fc2.kernel', 'layers.2.blocks.0.mlp.fc2.weight'),
                       ('layers.0.downsample.reduction.kernel',
                        'layers.0.downsample.reduction.weight')):
    np.testing.assert_array_equal(value(ours), src[theirs].T, err_msg=ours)
  for ours, theirs in (('layers.3.blocks.1.norm2.scale', 'layers.3.blocks.1.norm2.weight'),
                       ('layers.1.blocks.0.attn.qkv.bias', 'layers.1.blocks.0.attn.qkv.bias'),
                       ('norm.bias', 'norm.bias')):
    np.testing.assert_array_equal(value(ours), src[theirs], err_msg=ours)
  table = src['layers.1.blocks.1.attn.relative_position_bias_table']  # (169, 2)
  np.testing.assert_array_equal(
      value('layers.1.blocks.1.attn.relative_position_bias_table'),
      np.concatenate([table] * 15))


def nnx_param(model, path):
  for part in path.split('.'):
    model = model[int(part)] if part.isdigit() else getattr(model, part)
  return model[...]


def test_cli_inflate_needs_num_classes(tmp_path, capsys):
  with pytest.raises(SystemExit) as err:
    convert_tool.main(['--model', 'video_swin_tiny', '--src',
                  os.path.join(FIXTURES, 'swin_tiny.microsoft.npz'), '--inflate',
                  '--out', str(tmp_path / 'o')])
  assert err.value.code == 2 and '--num_classes' in capsys.readouterr().err
  with pytest.raises(SystemExit) as err:
    convert_tool.main(['--model', 'swin_tiny', '--src',
                  os.path.join(FIXTURES, 'swin_tiny.microsoft.npz'), '--inflate',
                  '--out', str(tmp_path / 'o')])
  assert err.value.code == 2 and 'builds video models' in capsys.readouterr().err
  assert not (tmp_path / 'o').exists()
