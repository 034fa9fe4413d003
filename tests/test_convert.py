"""PyTorch checkpoint conversion: logit parity with timm, strictness, full-size names.

Fixtures (tests/fixtures/, made by scripts/make_parity_fixtures.py with torch +
timm, listed in parity.json) hold reduced-size timm models' state_dicts, inputs
and logits; full-size models appear only as name/shape lists; the official STViT-R ones are
in tests/fixtures/stvit_r/ (its README says where they come from).
"""
import functools
import json
import os
import re

import jax
import numpy as np
import pytest
from flax import nnx

from stvit_jax.tools import convert as convert_tool
from stvit_jax.weights import convert
from stvit_jax.weights import factory
from stvit_jax.weights import store
from stvit_jax import models
from stvit_jax.weights import pos_embed, torch_files

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
REFERENCE = os.path.join(os.path.dirname(__file__), 'fixtures', 'stvit_r')
MANIFEST = json.load(open(os.path.join(FIXTURES, 'parity.json')))
CASES = MANIFEST['cases']


def fixture(name):
  return os.path.join(FIXTURES, name)


def case_options(case):
  """The convert options of a fixture case (img_size included)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in case['options'].items()}


@functools.lru_cache(maxsize=None)
def state_dict(file):
  return torch_files.load_state_dict(fixture(file))[0]


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, images):
  return nnx.merge(graphdef, state)(images)[0]


def forward(model, images_nchw):
  graphdef, state = nnx.split(model)
  return np.asarray(_forward(graphdef, state, np.asarray(images_nchw, np.float32).transpose(0, 2, 3, 1)))


def assert_parity(logits, reference):
  diff, scale = np.abs(logits - reference).max(), np.abs(reference).max()
  assert diff <= 1e-4 * scale, f'max |diff| {diff:.3g} > 1e-4 * max |logit| {scale:.3g}'


@pytest.mark.parametrize('name', sorted(CASES))
def test_fixture_logits_match_timm(name):
  case = CASES[name]
  model, conv, layout = convert.convert(case['model'], state_dict(case['state']),
                                        **case_options(case))
  assert layout == case.get('layout')
  assert not conv.fresh and len(conv.consumed) + len(conv.ignored) == len(state_dict(case['state']))
  io = np.load(fixture(case['io']))
  assert_parity(forward(model, io['input']), io['logits'])
  if 'resize_pos_embed' in case:
    assert any('pos_embed: resized' in n for n in conv.notes)


def test_swin_layouts_give_identical_weights():
  cases = [c for c in CASES.values() if c['model'] == 'swin_tiny']
  plans = {}
  for case in cases:
    opts = case_options(case)
    conv, _, layout = convert.plan('swin_tiny', state_dict(case['state']), **opts)
    plans[layout] = conv
  assert set(plans) == {'microsoft', 'timm'}
  ms, timm = plans['microsoft'], plans['timm']
  assert sorted(ms.arrays) == sorted(timm.arrays)
  for k in ms.arrays:
    np.testing.assert_array_equal(ms.arrays[k], timm.arrays[k])
  assert timm.consumed['layers.1.downsample.reduction.weight'] == 'params/layers.0.downsample.reduction.kernel'
  assert ms.consumed['layers.0.downsample.reduction.weight'] == 'params/layers.0.downsample.reduction.kernel'
  assert timm.consumed['head.fc.weight'] == ms.consumed['head.weight'] == 'params/head.kernel'
  reasons = set(ms.ignored.values())
  assert reasons == {'Swin relative_position_index (rebuilt)', 'Swin shifted-window attn_mask (rebuilt)'}


@functools.lru_cache(maxsize=None)
def _targets(name):
  """{model weight: shape} of the full-size model (shared by both Swin layouts)."""
  abstract = nnx.eval_shape(lambda: models.create(name))
  return {k: tuple(v.shape) for k, v in store.flat_variables(abstract).items()}


def read_names(path):
  """[(name, shape, dtype)] from a 'name<TAB>(shape)<TAB>dtype' list."""
  rows = []
  for line in open(path):
    if line.startswith('#') or not line.strip():
      continue
    name, shape, dtype = line.rstrip('\n').split('\t')
    rows.append((name, tuple(int(d) for d in re.findall(r'\d+', shape)), dtype))
  return rows


def random_state_dict(rows, seed=0, lazy=False):
  rng = np.random.default_rng(seed)
  def make(shape, dtype):
    if lazy or dtype != 'float32':  # zero-memory stand-ins of the right shape
      return np.broadcast_to(np.zeros((), np.int64 if dtype == 'int64' else np.float32), shape)
    return rng.standard_normal(shape, dtype=np.float32)
  return {name: make(shape, dtype) for name, shape, dtype in rows}


@pytest.mark.slow  # full-size state_dicts
@pytest.mark.parametrize('size,params', [('s', 49_625_518), ('b', 87_812_336)])
def test_official_stvit_r_names_convert_with_nothing_left(size, params):
  path = os.path.join(REFERENCE, f'stvit_r_swin_{size}_state_dict.txt')
  assert os.path.exists(path), f'official STViT-R name list missing: {path}'
  rows = read_names(path)
  sd = random_state_dict(rows, lazy=size == 'b')
  name = {'s': 'stvit_r_swin_small', 'b': 'stvit_r_swin_base'}[size]
  conv, kwargs, layout = convert.plan(name, sd)   # raises on any leftover / missing / shape
  assert layout == 'microsoft' and kwargs['num_classes'] == 1000 and not conv.fresh
  assert set(conv.consumed) | set(conv.ignored) == set(sd) and len(sd) == 393
  assert sorted(set(conv.ignored.values())) == [
      'BatchNorm step counter', 'Swin relative_position_index (rebuilt)',
      'Swin shifted-window attn_mask (rebuilt)']
  assert sum(a.size for k, a in conv.arrays.items() if k.startswith('params/')) == params
  if size == 's':  # values land where they belong, in the model's layout
    a = conv.arrays
    np.testing.assert_array_equal(a['params/layers.2.blocks.1.attn.kv.kernel'],
                                  sd['layers.2.blocks.1.attn.kv.weight'].T)
    np.testing.assert_array_equal(a['params/patch_embed.proj.1.c.kernel'],
                                  sd['patch_embed.proj.2.c.weight'].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(a['batch_stats/patch_embed.proj.1.bn.var'],
                                  sd['patch_embed.proj.2.bn.running_var'])
    np.testing.assert_array_equal(a['params/patch_embed.proj.0.bn.scale'],
                                  sd['patch_embed.proj.0.bn.weight'])
    np.testing.assert_array_equal(a['params/layers.2.blocks.5.layer_scale_2'],
                                  sd['layers.2.blocks.5.layer_scale_2'])


@pytest.mark.parametrize('size', ['s', 'b'])
def test_official_stvit_r_names_map_to_ours_and_back(size):
  """The authors' own names (not ones made from our rules, as weights_server's test
  checkpoints are): each maps to one of our weights, of the official shape in our layout,
  and our name maps back to it; every weight of ours is one official name's."""
  rows = read_names(os.path.join(REFERENCE, f'stvit_r_swin_{size}_state_dict.txt'))
  name = {'s': 'stvit_r_swin_small', 'b': 'stvit_r_swin_base'}[size]
  targets = _targets(name)
  rules = convert.RULES[convert.rules_for(name, {'layers.0.downsample.x': 0})[0]]
  rebuilt = ('num_batches_tracked', 'relative_position_index', 'attn_mask')  # no weights
  official = [(n, shape) for n, shape, _ in rows if not n.endswith(rebuilt)]
  assert len(rows) - len(official) == 13  # 2 BatchNorm counters, 9 index tables, 2 masks
  ours = {}
  for source, shape in official:
    target = convert.model_name(source, len(shape), rules, targets)
    assert target in targets and target not in ours, (source, target)
    ours[target] = source
    assert convert.source_name(target, rules) == source
    # PyTorch layouts by hand: Linear (out, in) -> (in, out), Conv (O, I, H, W) -> (H, W, I, O)
    if target.endswith('.kernel'):
      shape = shape[::-1] if len(shape) == 2 else (*shape[2:], shape[1], shape[0])
    assert targets[target] == shape, (source, target)
  assert set(ours) == set(targets)


@pytest.mark.slow  # full-size state_dicts
@pytest.mark.parametrize('file', sorted(MANIFEST['names']))
def test_full_size_timm_names_convert_with_nothing_left(file):
  info = MANIFEST['names'][file]
  sd = random_state_dict(read_names(fixture(f'names/{file}')), lazy=True)
  rules, layout = convert.rules_for(info['model'], sd)
  conv = convert.convert_state_dict(sd, _targets(info['model']), convert.RULES[rules])
  assert layout == info['layout'] and not conv.fresh
  assert set(conv.consumed) | set(conv.ignored) == set(sd)


def test_renamed_missing_and_misshaped_tensors_are_all_named():
  sd = dict(state_dict('deit_tiny.npz'))
  sd['blocks.1.mlp.fc_1.weight'] = sd.pop('blocks.1.mlp.fc1.weight')      # renamed
  del sd['norm.bias']                                                      # missing
  sd['blocks.0.attn.proj.weight'] = sd['blocks.0.attn.proj.weight'][:, :16]  # mis-shaped
  opts = case_options(CASES['deit_tiny'])
  with pytest.raises(convert.ConversionError) as err:
    convert.plan('deit_tiny', sd, **opts)
  msg = str(err.value)
  assert '4 problem(s)' in msg  # the renamed tensor is both unexpected and missing
  assert 'unexpected: blocks.1.mlp.fc_1.weight (128, 32)' in msg
  assert 'missing: params/blocks.1.mlp.fc1.kernel (32, 128) (expected source tensor blocks.1.mlp.fc1.weight)' in msg
  assert 'missing: params/norm.bias (32,) (expected source tensor norm.bias)' in msg
  assert 'shape mismatch: blocks.0.attn.proj.weight (32, 16)' in msg and 'needs (32, 32)' in msg


def test_head_replacement_and_class_count_inference():
  sd = state_dict('deit_tiny_distilled.npz')
  opts = case_options(CASES['deit_tiny_distilled'])
  conv, kwargs, _ = convert.plan('deit_tiny_distilled', sd, **opts)
  assert kwargs['num_classes'] == 10 and not conv.fresh       # from the source head
  conv, kwargs, _ = convert.plan('deit_tiny_distilled', sd, num_classes=3, **opts)
  assert kwargs['num_classes'] == 3
  assert conv.fresh == ['params/head.bias', 'params/head.kernel',
                        'params/head_dist.bias', 'params/head_dist.kernel']
  assert all(conv.ignored[k].startswith('head replaced') for k in
             ('head.weight', 'head.bias', 'head_dist.weight', 'head_dist.bias'))


def test_pos_embed_of_another_grid_needs_img_size():
  opts = case_options(CASES['deit_tiny'])
  del opts['img_size']  # a 64x64 source; the model defaults to 224
  with pytest.raises(convert.ConversionError) as err:
    convert.plan('deit_tiny', state_dict('deit_tiny.npz'), **opts)
  assert str(err.value).splitlines()[1:] == [
      '  shape mismatch: pos_embed (1, 17, 32) -> params/pos_embed (1, 17, 32), the model needs '
      '(1, 197, 32) (another resolution: pass img_size to resize it)']


def test_resize_matrix_is_identity_at_same_size_and_normalised():
  np.testing.assert_allclose(pos_embed._resize_matrix(7, 7), np.eye(7), atol=1e-12)
  for n_in, n_out in ((4, 6), (14, 24), (24, 14), (4, 3)):
    np.testing.assert_allclose(pos_embed._resize_matrix(n_in, n_out).sum(1), 1.0)


def test_layout_choice_errors():
  sd = state_dict('swin_tiny.timm.npz')
  with pytest.raises(ValueError, match=r"layout='sideways' is not valid; choose one of \['auto', 'microsoft', 'timm', 'original', 'mmaction2', 'torchvision'\]"):
    convert.rules_for('swin_tiny', sd, 'sideways')
  with pytest.raises(ValueError, match="exists only for swin_"):
    convert.rules_for('stvit_r_swin_small', sd, 'timm')
  with pytest.raises(convert.ConversionError, match='pass --layout'):
    convert.detect_layout({'norm.weight': np.zeros(3)})
  with pytest.raises(ValueError, match='valid models: .*deit_small'):
    convert.family_of('resnet50')


@pytest.fixture(scope='module')
def converted_deit(tmp_path_factory):
  """The distilled DeiT fixture written by the CLI (from .npz) to an orbax directory."""
  out = tmp_path_factory.mktemp('w') / 'deit'
  case = CASES['deit_tiny_distilled']
  opts = case_options(case)
  convert_tool.main(['--model', 'deit_tiny_distilled', '--src', fixture(case['state']),
                '--out', str(out)] + [a for k, v in opts.items() for a in ('--set', f'{k}={v}')])
  return out


def test_cli_writes_weights_that_restore_with_parity(converted_deit, capsys):
  prov = store.read_provenance(converted_deit)
  assert prov['model'] == 'deit_tiny_distilled' and prov['num_classes'] == 10
  assert prov['source']['sha256'] == torch_files.sha256(fixture('deit_tiny_distilled.npz'))
  assert prov['consumed'] == len(state_dict('deit_tiny_distilled.npz'))
  model = factory.from_directory(converted_deit)
  io = np.load(fixture(CASES['deit_tiny_distilled']['io']))
  assert_parity(forward(model, io['input']), io['logits'])


def test_load_weights_is_strict_and_can_replace_the_head(converted_deit):
  opts = store.read_provenance(converted_deit)['options']
  small = {**opts, 'num_classes': 4}
  with pytest.raises(ValueError, match=r'(?s)shape mismatch: params/head.kernel .*replace_head=True'):
    store.load_weights(models.create('deit_tiny_distilled', **small), converted_deit)
  model = models.create('deit_tiny_distilled', **small)
  fresh = np.asarray(model.head.kernel[...])
  store.load_weights(model, converted_deit, replace_head=True)
  np.testing.assert_array_equal(model.head.kernel[...], fresh)
  reference = torch_files.load_state_dict(fixture('deit_tiny_distilled.npz'))[0]
  np.testing.assert_array_equal(model.blocks[1].mlp.fc2.kernel[...],
                                reference['blocks.1.mlp.fc2.weight'].T)
  deeper = models.create('deit_tiny_distilled', **{**opts, 'depth': 3})
  with pytest.raises(ValueError, match=r'missing from the checkpoint: params/blocks.2.attn.qkv.kernel'):
    store.load_weights(deeper, converted_deit)


def test_cli_reads_pth_and_safetensors(tmp_path):
  torch = pytest.importorskip('torch')
  safetensors_torch = pytest.importorskip('safetensors.torch')
  sd = state_dict('deit_tiny.npz')
  tensors = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
  torch.save({'model': {f'module.{k}': v for k, v in tensors.items()}, 'epoch': 3},
             tmp_path / 'ckpt.pth')
  safetensors_torch.save_file(tensors, str(tmp_path / 'ckpt.safetensors'))
  for src in ('ckpt.pth', 'ckpt.safetensors'):
    loaded, key = torch_files.load_state_dict(str(tmp_path / src))
    loaded, stripped = torch_files.strip_prefix(loaded)
    assert (key, stripped) == (('model', True) if src.endswith('pth') else (None, False))
    assert sorted(loaded) == sorted(sd)
    for k in sd:
      np.testing.assert_array_equal(loaded[k], sd[k])


def test_cli_errors_name_the_field(tmp_path, capsys):
  with pytest.raises(SystemExit):
    convert_tool.main(['--model', 'deit_huge', '--src', fixture('deit_tiny.npz'), '--out', str(tmp_path)])
  assert "--model 'deit_huge' is not valid; choose one of" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    convert_tool.main(['--model', 'swin_tiny', '--src', fixture('swin_tiny.timm.npz'),
                  '--out', str(tmp_path), '--layout', 'sideways'])
  assert "invalid choice: 'sideways'" in capsys.readouterr().err
  with pytest.raises(ValueError, match=r"unknown format '.bin'; use one of .pth, .pt, .safetensors, .npz"):
    torch_files.load_state_dict(str(tmp_path / 'x.bin'))
  with pytest.raises(SystemExit, match='does not convert to deit_tiny'):  # classes fine, grid not
    convert_tool.main(['--model', 'deit_tiny', '--src', fixture('deit_tiny.npz'), '--out', str(tmp_path / 'o')])


def test_pth_without_torch_says_how_to_install(tmp_path, monkeypatch):
  (tmp_path / 'x.pth').write_bytes(b'')
  monkeypatch.setitem(__import__('sys').modules, 'torch', None)  # import torch -> ImportError
  with pytest.raises(ImportError, match=r"pip install 'stvit_jax\[torch\]'"):
    torch_files.load_state_dict(str(tmp_path / 'x.pth'))
