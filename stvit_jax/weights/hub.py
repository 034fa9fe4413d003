"""Weights by name or address: download once, convert once, cache, load.

    stvit_jax.create('stvit_r_swin_small', pretrained=True)          # the catalogue entry
    stvit_jax.create('deit_small', pretrained='hf://timm/deit_small_patch16_224.fb_in1k/model.safetensors')
    --config.init_from=pretrained | hf://owner/repo[@revision]/file | https://host/file.pth

A source is the word `pretrained` (the model's entry in weights/catalogue.py),
`hf://owner/repo[@revision]/path/in/repo`, an `https://` URL, or a directory
written by `python -m stvit_jax.tools.convert` (returned as it is).

Hub files come through huggingface_hub (its cache, $HF_ENDPOINT, $HF_TOKEN or
`hf auth login` for private repos, $HF_HUB_OFFLINE); URLs through a resumable
download (HTTP Range) into the cache below. A published sha256 is checked.
The file is converted once with stvit_jax.weights.convert and the orbax weights kept in

    $XDG_CACHE_HOME/stvit_jax/converted/<model>-<key>/   (default ~/.cache/stvit_jax)

keyed by the source address, its published checksum, the model and the
conversion options, so a second call reads them without touching the network
(and works with HF_HUB_OFFLINE=1). To refresh, delete that directory.

    python -m stvit_jax.tools.pretrained                      # the catalogue, with cache state
    python -m stvit_jax.tools.pretrained --download stvit_r_swin_small   # fetch + convert now
"""
from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request

from stvit_jax import models
from stvit_jax.weights import catalogue, convert, torch_files

log = logging.getLogger(__name__)

SCHEMES = ('hf://', 'https://', 'http://')
KEYWORD = 'pretrained'
# Constructor options that change no weight shape: they never force a new conversion.
RUNTIME_OPTIONS = ('num_classes', 'drop_rate', 'drop_path_rate', 'dtype', 'seed', 'rngs',
                   'dense')
ATTEMPTS = 3  # tries per URL download, each resuming where the last one stopped


class PretrainedError(ValueError):
  """A source that cannot be fetched, verified or converted; the message says what to do."""


def is_address(source) -> bool:
  """True for `pretrained`, hf:// and http(s):// sources (False for directories)."""
  return isinstance(source, str) and (source == KEYWORD or source.startswith(SCHEMES))


def cache_root():
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'stvit_jax')


def offline() -> bool:
  return os.environ.get('HF_HUB_OFFLINE', '').strip().lower() in ('1', 'true', 'yes', 'on')


def _digest(*parts):
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def conversion_options(model, options=None, base=()):
  """The options that shape the converted weights: `base` (the catalogue entry's), then
  those of `options` that differ from the model's defaults, except RUNTIME_OPTIONS."""
  defaults = models.options(model)
  chosen = dict(base)
  for k, v in (options or {}).items():
    v = tuple(v) if isinstance(v, list) else v
    if k in RUNTIME_OPTIONS or k not in defaults:
      continue
    if v != defaults[k] or k in chosen:
      chosen[k] = v
  return chosen


def parse_hf(address):
  """'hf://owner/repo[@rev]/path/file' -> (repo_id, filename, revision or None)."""
  parts = address[len('hf://'):].split('/')
  if len(parts) < 3 or not all(parts):
    raise PretrainedError(f'{address}: expected hf://owner/repo/file (optionally '
                          'hf://owner/repo@revision/file)')
  repo, _, revision = parts[1].partition('@')
  return f'{parts[0]}/{repo}', '/'.join(parts[2:]), revision or None


def _how_to_get(address, model):
  file = address.rstrip('/').rsplit('/', 1)[-1]
  return (f'Run once with network access (python -m stvit_jax.tools.pretrained --download {model}'
          f'{"" if catalogue.find(address) else " --source " + address}), or fetch {file} '
          f'yourself and convert it: python -m stvit_jax.tools.convert --model {model} --src {file} '
          '--out DIR, then pass DIR')


def _download_hf(address, model):
  from huggingface_hub import hf_hub_download
  from huggingface_hub import errors
  repo_id, filename, revision = parse_hf(address)
  endpoint = os.environ.get('HF_ENDPOINT') or None  # read now: huggingface_hub reads it at import
  try:
    return hf_hub_download(repo_id, filename, revision=revision, endpoint=endpoint,
                           cache_dir=os.environ.get('HF_HUB_CACHE') or None,
                           local_files_only=offline())
  except errors.GatedRepoError as e:
    raise PretrainedError(f'{address}: {repo_id} is gated; accept its terms on the Hub and log '
                          f'in (hf auth login, or set HF_TOKEN): {_first_line(e)}') from None
  except errors.RepositoryNotFoundError:
    raise PretrainedError(f'{address}: the Hub ({endpoint or "huggingface.co"}) has no '
                          f'repository {repo_id!r} (for a private one: hf auth login, or set '
                          'HF_TOKEN)') from None
  except errors.RevisionNotFoundError:
    raise PretrainedError(f'{address}: {repo_id} has no revision {revision!r}') from None
  except errors.RemoteEntryNotFoundError:
    raise PretrainedError(f'{address}: {repo_id} has no file {filename!r}'
                          f'{" at " + revision if revision else ""}') from None
  except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as e:
    why = 'HF_HUB_OFFLINE is set' if offline() else _first_line(e)
    raise PretrainedError(f'{filename} ({address}, weights of {model}) is not in the '
                          f'Hugging Face cache and cannot be downloaded: {why}. '
                          + _how_to_get(address, model)) from None


def _first_line(e):
  return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _download_url(url, model, sha256=None):
  """The file at `url` in the cache; a broken transfer resumes with a Range request."""
  name = url.rstrip('/').rsplit('/', 1)[-1].split('?')[0] or 'download'
  folder = os.path.join(cache_root(), 'downloads', _digest(url)[:16])
  dest = os.path.join(folder, name)
  if os.path.exists(dest):
    return dest
  if offline():
    raise PretrainedError(f'{name} ({url}, weights of {model}) is not in the cache ({folder}) '
                          'and HF_HUB_OFFLINE is set. ' + _how_to_get(url, model))
  os.makedirs(folder, exist_ok=True)
  part, last = dest + '.part', None
  for attempt in range(ATTEMPTS):
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
    try:
      with urllib.request.urlopen(request, timeout=60) as response:
        if have and response.status != 206:  # the server ignored the Range: start over
          have = 0
        length = response.headers.get('Content-Length')
        total = have + int(length) if length is not None else None
        if have:
          log.warning('%s: resuming at byte %d of %s', url, have, total)
        _copy(response, part, 'ab' if have else 'wb', have, total, url)
      size = os.path.getsize(part)
      if total is not None and size != total:
        raise http.client.IncompleteRead(b'', total - size)
      break
    except urllib.error.HTTPError as e:
      if e.code == 416 and have:  # nothing left to send: the part file is complete
        break
      if e.code < 500:
        raise PretrainedError(f'{url}: HTTP {e.code} {e.reason} (weights of {model})') from None
      last = e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
      last = e
    log.warning('%s: attempt %d of %d stopped (%s)', url, attempt + 1, ATTEMPTS, last)
    time.sleep(0.5 * attempt)
  else:
    kept = os.path.getsize(part) if os.path.exists(part) else 0
    raise PretrainedError(f'{name} ({url}, weights of {model}) could not be downloaded after '
                          f'{ATTEMPTS} attempts: {last}. {kept} bytes are kept in {part}; '
                          'rerunning resumes there. ' + _how_to_get(url, model))
  if sha256:
    got = torch_files.sha256(part)
    if got != sha256:
      os.remove(part)
      raise PretrainedError(f'{url}: checksum mismatch: sha256 {got}, the catalogue expects '
                            f'{sha256}; the download was deleted (rerun to fetch it again)')
  os.replace(part, dest)
  return dest


def _copy(response, path, mode, done, total, url):
  """Streams `response` into `path`, logging progress every few seconds."""
  shown = time.monotonic()
  with open(path, mode) as f:
    for block in iter(lambda: response.read(1 << 20), b''):
      f.write(block)
      done += len(block)
      if time.monotonic() - shown > 5:
        shown = time.monotonic()
        log.warning('%s: %.1f of %s MB', url, done / 1e6,
                    f'{total / 1e6:.1f}' if total else '?')


def _has_torch():
  return importlib.util.find_spec('torch') is not None


def converted_dir(address, sha256, model, options):
  """Where the conversion of `address` for `model` with `options` is cached."""
  return os.path.join(cache_root(), 'converted',
                      f'{model}-{_digest(address, sha256, model, dict(options))[:16]}')


def is_cached(target):
  return os.path.isfile(os.path.join(target, 'provenance.json'))


def resolve(source, *, model=None, options=None):
  """A converted-weights directory for `source` (see the module docstring).

  `model`: the registry name (needed for `pretrained`, and for addresses that are
  not in the catalogue). `options`: the model's constructor overrides; those that
  change weight shapes (a tiny width, another img_size) are converter options.
  Raises PretrainedError with what to do next.
  """
  if not is_address(source):
    return source
  try:
    entry = catalogue.get(model) if source == KEYWORD else catalogue.find(source)
  except ValueError as e:  # no entry for `model`: one message for the CLIs
    raise PretrainedError(str(e)) from None
  if entry is not None and model is not None and entry.model != model:
    raise PretrainedError(f'{source} holds weights of {entry.model}, not of {model}')
  if entry is None and model is None:
    raise PretrainedError(f'{source} is not in the catalogue: name the model it holds')
  model = model or entry.model
  address = entry.address if entry else source
  expected = entry.sha256 if entry else None
  conv = conversion_options(model, options, entry.options if entry else ())
  target = converted_dir(address, expected, model, conv)
  if is_cached(target):
    log.info('%s: cached converted weights %s', address, target)
    return target

  ext = os.path.splitext(address.split('?')[0])[1].lower()
  if ext in ('.pth', '.pt') and not _has_torch():
    raise PretrainedError(f'{address} (weights of {model}) is a PyTorch file: reading it '
                          "needs PyTorch: pip install 'stvit_jax[torch]'")
  t0 = time.perf_counter()
  path = _download_hf(address, model) if address.startswith('hf://') else \
      _download_url(address, model, expected)
  if expected and address.startswith('hf://'):
    got = torch_files.sha256(path)
    if got != expected:
      raise PretrainedError(f'{address}: checksum mismatch: sha256 {got} of {path}, the '
                            f'catalogue expects {expected}; delete that file and retry')
  log.warning('%s: converting %s for %s', address, path, model)
  _convert(model, path, address, conv, target)
  log.warning('%s: converted weights cached in %s (%.1fs)', address, target,
              time.perf_counter() - t0)
  return target


def _convert(model, path, address, conv, target):
  tmp = f'{target}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    convert.convert_file(model, path, tmp, extra_provenance={'address': address},
                         **conv)
  except (convert.ConversionError, ValueError, ImportError) as e:
    shutil.rmtree(tmp, ignore_errors=True)
    raise PretrainedError(f'{address} does not convert to {model}: {e}') from None
  try:
    os.rename(tmp, target)
  except OSError:  # another process finished the same conversion first
    shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.isfile(os.path.join(target, 'provenance.json')):
      raise


def expected_top1(model, init_from):
  """The catalogue entry behind `init_from` for `model` (None if there is none)."""
  if init_from == KEYWORD:
    return catalogue.entries().get(model)
  return catalogue.find(init_from) if is_address(init_from) else None
