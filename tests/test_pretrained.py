"""Weights by name or address (stvit_jax.weights.hub) against a local server, no network.

The served files are the timm DeiT-tiny parity fixture (width 32, depth 2, 64 px, 10
classes) as .safetensors and .pth; a test catalogue ($STVIT_JAX_CATALOGUE) points
`deit_tiny` at the server, so `pretrained=True` runs the real download, conversion
and cache code. Logits are checked against timm's on the fixture's inputs.
"""
import hashlib
import importlib.util
import io
import json
import os
import time

# huggingface_hub reads HF_HUB_OFFLINE once, when its (lazily imported) constants module
# loads: load it now, while the variable is unset, not inside a test that sets it.
import huggingface_hub.constants  # noqa: F401
import numpy as np
import pytest

import stvit_jax
from stvit_jax import models
from stvit_jax.tools import pretrained
from stvit_jax.weights import hub
from stvit_jax.weights import factory, store
from stvit_jax.weights import catalogue
from weights_server import Server

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
TINY = {'depth': 2, 'embed_dim': 32, 'num_heads': 2, 'img_size': 64}


def state_dict():
  with np.load(os.path.join(FIXTURES, 'deit_tiny.npz')) as f:
    return {k: f[k] for k in f.files}


def safetensors_bytes():
  from safetensors.numpy import save
  return save(state_dict())


def pth_bytes():
  """The fixture as a torch.save'd file; without torch (CI installs no torch extra), bytes
  that only a .pth-reading path without torch gets to see (its error names the extra)."""
  if importlib.util.find_spec('torch') is None:
    return b'PK torch is not installed here'
  import torch  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  torch.save({'model': {k: torch.from_numpy(v) for k, v in state_dict().items()}}, buf)
  return buf.getvalue()


@pytest.fixture(scope='module')
def server():
  with Server() as s:
    s.files['deit_tiny.safetensors'] = safetensors_bytes()
    s.files['deit_tiny.pth'] = pth_bytes()
    s.repos['test-org/tiny-deit'] = {'model.safetensors': s.files['deit_tiny.safetensors']}
    yield s


def sha(data):
  return hashlib.sha256(data).hexdigest()


@pytest.fixture
def env(server, tmp_path, monkeypatch):
  """Empty caches in tmp_path, the Hub at the server, a catalogue with `deit_tiny` served."""
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hf'))
  monkeypatch.setenv('HF_ENDPOINT', server.url)
  monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
  server.requests.clear()
  server.truncate.clear()

  def write_catalogue(**entries):
    path = tmp_path / 'catalogue.json'
    path.write_text(json.dumps(entries))
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(path))

  write_catalogue(deit_tiny={
      'address': server.file_url('deit_tiny.safetensors'), 'format': 'safetensors',
      'top1': 12.5, 'dataset': 'test', 'options': TINY,
      'sha256': sha(server.files['deit_tiny.safetensors'])})
  return write_catalogue


def assert_timm_logits(model):
  io_ = np.load(os.path.join(FIXTURES, 'deit_tiny.io.npz'))
  logits = np.asarray(model(io_['input'].transpose(0, 2, 3, 1), train=False)[0])
  diff, scale = np.abs(logits - io_['logits']).max(), np.abs(io_['logits']).max()
  assert diff <= 1e-4 * scale, (diff, scale)


@pytest.mark.slow  # initialises a model with a fresh head (~30 s of compiles on 2 cores)
def test_pretrained_true_downloads_once_then_reads_the_cache(env, server, tmp_path, monkeypatch):
  t0 = time.perf_counter()
  model = stvit_jax.create('deit_tiny', pretrained=True)
  first = time.perf_counter() - t0
  assert_timm_logits(model)
  gets = [r for r in server.requests if r[0] == 'GET']
  assert gets == [('GET', '/files/deit_tiny.safetensors', None)]
  (converted,) = (tmp_path / 'cache' / 'stvit_jax' / 'converted').iterdir()
  provenance = store.read_provenance(converted)
  assert provenance['source']['sha256'] == sha(server.files['deit_tiny.safetensors'])
  assert provenance['source']['address'] == server.file_url('deit_tiny.safetensors')

  # Second call: from the cache, with the network "off" and nothing requested.
  server.requests.clear()
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  t0 = time.perf_counter()
  again = stvit_jax.create('deit_tiny', pretrained=True)
  second = time.perf_counter() - t0
  assert server.requests == []
  assert_timm_logits(again)
  print(f'first create(pretrained=True) {first:.2f}s, second (cache) {second:.2f}s')
  # Another class count: the cached weights with a fresh head, still no request.
  ten = stvit_jax.create('deit_tiny', pretrained=True, num_classes=3)
  assert ten.head.out_features == 3 and server.requests == []
  # Read without initialising: the rng streams are concrete, so training mode runs.
  drop = stvit_jax.create('deit_tiny', pretrained=True, drop_path_rate=0.5)
  x = np.ones((2, 64, 64, 3), np.float32)
  a, b = (np.asarray(drop(x, train=True)[0]) for _ in range(2))
  assert np.isfinite(a).all() and not np.allclose(a, b)  # two different dropout draws


def test_hub_address_through_huggingface_hub(env, server, tmp_path):
  address = 'hf://test-org/tiny-deit/model.safetensors'
  model = stvit_jax.create('deit_tiny', pretrained=address, **TINY)
  assert_timm_logits(model)
  paths = {r[1] for r in server.requests}
  assert '/test-org/tiny-deit/resolve/main/model.safetensors' in paths
  blobs = list((tmp_path / 'hf').glob('models--test-org--tiny-deit/blobs/*'))
  assert [b.name for b in blobs] == [sha(server.repos['test-org/tiny-deit']['model.safetensors'])]
  # factory.load takes the same address for a model built by the caller.
  from flax import nnx
  fresh = nnx.eval_shape(lambda: models.create('deit_tiny', **TINY, num_classes=10))
  provenance = factory.load(fresh, address, name='deit_tiny', options=TINY)
  assert provenance['source']['address'] == address
  assert_timm_logits(fresh)  # every weight came from the converted file


def test_pth_over_https(env, server):
  pytest.importorskip('torch')
  model = stvit_jax.create('deit_tiny', pretrained=server.file_url('deit_tiny.pth'), **TINY)
  assert_timm_logits(model)


def test_pth_without_torch_names_the_extra(env, server, monkeypatch):
  monkeypatch.setattr(hub, '_has_torch', lambda: False)
  with pytest.raises(hub.PretrainedError, match=r"pip install 'stvit_jax\[torch\]'"):
    stvit_jax.create('deit_tiny', pretrained=server.file_url('deit_tiny.pth'), **TINY)
  assert server.requests == []  # refused before downloading


def test_checksum_mismatch_deletes_the_download(env, server, tmp_path):
  env(deit_tiny={'address': server.file_url('deit_tiny.safetensors'), 'format': 'safetensors',
                 'options': TINY, 'sha256': '0' * 64})
  with pytest.raises(hub.PretrainedError, match='checksum mismatch: sha256 [0-9a-f]{64}'):
    stvit_jax.create('deit_tiny', pretrained=True)
  downloads = tmp_path / 'cache' / 'stvit_jax' / 'downloads'
  assert [p for p in downloads.rglob('*') if p.is_file()] == []
  assert not (tmp_path / 'cache' / 'stvit_jax' / 'converted').exists()


def test_interrupted_download_resumes_with_a_range_request(env, server):
  server.truncate['/files/deit_tiny.safetensors'] = 1
  model = stvit_jax.create('deit_tiny', pretrained=True)
  assert_timm_logits(model)  # and the sha256 of the joined file matched the catalogue's
  gets = [r for r in server.requests if r[0] == 'GET']
  half = len(server.files['deit_tiny.safetensors']) // 2
  assert gets == [('GET', '/files/deit_tiny.safetensors', None),
                  ('GET', '/files/deit_tiny.safetensors', f'bytes={half}-')]


def test_download_that_keeps_failing_keeps_the_part_for_the_next_run(env, server, monkeypatch):
  monkeypatch.setattr(hub, 'ATTEMPTS', 1)
  server.truncate['/files/deit_tiny.safetensors'] = 1
  with pytest.raises(hub.PretrainedError, match=r'kept in .*\.part; rerunning resumes'):
    stvit_jax.create('deit_tiny', pretrained=True)
  stvit_jax.create('deit_tiny', pretrained=True)  # the rerun resumes and completes
  assert server.requests[-1][2] is not None and server.requests[-1][2].startswith('bytes=')


@pytest.mark.parametrize('source', ['pretrained', 'hf://test-org/tiny-deit/model.safetensors'])
def test_offline_with_an_empty_cache_says_how_to_get_the_file(env, server, monkeypatch, source):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(hub.PretrainedError) as err:
    stvit_jax.create('deit_tiny', pretrained=source if source != 'pretrained' else True, **TINY)
  message = str(err.value)
  file = 'deit_tiny.safetensors' if source == 'pretrained' else 'model.safetensors'
  assert file in message and 'HF_HUB_OFFLINE is set' in message
  assert 'python -m stvit_jax.tools.pretrained --download deit_tiny' in message
  assert f'python -m stvit_jax.tools.convert --model deit_tiny --src {file} --out DIR' in message
  assert server.requests == []


def test_hub_repository_or_file_that_does_not_exist(env):
  with pytest.raises(hub.PretrainedError, match="has no repository 'nobody/missing'"):
    stvit_jax.create('deit_tiny', pretrained='hf://nobody/missing/model.safetensors', **TINY)
  with pytest.raises(hub.PretrainedError, match="has no file 'nope.safetensors'"):
    stvit_jax.create('deit_tiny', pretrained='hf://test-org/tiny-deit/nope.safetensors', **TINY)


def test_url_not_found_and_model_without_weights(env, server):
  with pytest.raises(hub.PretrainedError, match='HTTP 404'):
    stvit_jax.create('deit_tiny', pretrained=server.file_url('missing.safetensors'), **TINY)
  with pytest.raises(ValueError, match="no pretrained weights are known for 'stvit_deit_tiny'"):
    stvit_jax.create('stvit_deit_tiny', pretrained=True)


def test_catalogue_entries_are_well_formed():
  entries = catalogue.BUILTIN
  assert set(entries) <= set(models.names())
  assert entries['stvit_r_swin_small'].address == 'hf://csncsn/STViT-R/STViT-R-Swin-S.pth'
  assert entries['stvit_r_swin_small'].top1 == 82.7
  assert entries['stvit_r_swin_base'].top1 == 83.2
  assert entries['swin_small'].address == \
      'hf://timm/swin_small_patch4_window7_224.ms_in1k/model.safetensors'
  assert entries['video_swin_tiny'].address.endswith(
      '/v1.0.4/swin_tiny_patch244_window877_kinetics400_1k.pth')
  assert [entries[f'video_swin_{s}'].top1 for s in ('tiny', 'small', 'base')] == [78.8, 80.6, 80.6]
  for entry in entries.values():
    if entry.address.startswith('hf://'):
      assert hub.parse_hf(entry.address)[1] == entry.file
    video = models.family(entry.model).input_kind == 'video'
    assert entry.top1 and entry.dataset.startswith('kinetics400' if video else 'imagenet2012')


def test_video_swin_release_file_by_url(env, server):
  """A file laid out as Video Swin's K400 releases ({'state_dict': backbone.*, cls_head.*},
  torch-saved) loads by URL and gives the original code's logits."""
  torch = pytest.importorskip('torch')
  with np.load(os.path.join(FIXTURES, 'video_swin_tiny.npz')) as f:
    release = {'meta': {}, 'state_dict': {k: torch.from_numpy(f[k]) for k in f.files}}
  buf = io.BytesIO()
  torch.save(release, buf)
  server.files['vswin_tiny_k400.pth'] = buf.getvalue()
  model = stvit_jax.create('video_swin_tiny', pretrained=server.file_url('vswin_tiny_k400.pth'),
                        num_classes=10, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
  data = np.load(os.path.join(FIXTURES, 'video_swin_tiny.io.npz'))
  logits = np.asarray(model(data['input'].astype(np.float32).transpose(0, 2, 3, 4, 1),
                            train=False)[0])
  scale = np.abs(data['logits']).max()
  assert np.abs(logits - data['logits']).max() <= 1e-4 * scale


def test_listing_and_download_command(env, server, capsys):
  assert pretrained.main([]) == 0
  out = capsys.readouterr().out
  assert 'stvit_r_swin_small' in out and '82.70' in out and 'hf://csncsn/STViT-R/' in out
  assert pretrained.main(['--download', 'deit_tiny']) == 0
  assert pretrained.main([]) == 0
  row = next(l for l in capsys.readouterr().out.splitlines() if l.startswith('deit_tiny '))
  assert row.split()[1:4] == ['12.50', 'safetensors', 'yes']
  assert pretrained.main(['--download', 'stvit_deit_tiny']) == 2
  assert 'no pretrained weights are known' in capsys.readouterr().err
  # A bad name among several is reported; the others are still fetched.
  assert pretrained.main(['--download', 'stvit_deit_tiny', 'deit_tiny']) == 2
  out, err = capsys.readouterr()
  assert 'stvit_deit_tiny' in err and out.startswith('deit_tiny: ')


def test_flops_pretrained_column(capsys, monkeypatch):
  from stvit_jax.tools import flops
  monkeypatch.delenv(catalogue.CATALOGUE_ENV, raising=False)
  flops.main(['deit_tiny', 'stvit_deit_tiny', '--pretrained'])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].split() == ['model', 'params', 'GMACs', 'top-1', 'weights']
  assert lines[1].split()[3:] == ['72.19',
                                  'hf://timm/deit_tiny_patch16_224.fb_in1k/model.safetensors']
  assert lines[2].split()[3:] == ['-', '-']
