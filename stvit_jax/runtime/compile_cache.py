"""JAX's persistent compilation cache, for the trainer and every tool.

A run resumed after a preemption, a rerun of a tool, or a second process of the same
run compiles the same programs again: seconds to minutes on a CPU, up to twenty
minutes for a large model on a TPU slice (docs/tpu_compile_proofs.txt). With the
cache an executable compiled once is read back instead.

Where (`config.compilation_cache_dir`, or `--compilation_cache_dir` of the tools):

  None (default)  $JAX_COMPILATION_CACHE_DIR when set, else
                  ~/.cache/stvit_jax/xla ($XDG_CACHE_HOME respected)
  ''              off
  a path          a local folder or gs://bucket/...: every process of a run shares it
                  (launch/ points it at the run's bucket)

What: every executable whose compile took at least `min_compile_secs`
(`config.compilation_cache_min_compile_secs`, default 0: all of them). The model's
eager initialisation is hundreds of compiles of a fraction of a second each (a tiny
STViT-DeiT: 44 s of them in a fresh process, 9 s with the cache), so a 1 s floor (JAX's
own default) would leave most of the start-up uncached. On gs:// each entry is one
object write: raise the floor there if the writes cost more than they save.
"""
from __future__ import annotations

import os
import threading

import jax

ENV = 'JAX_COMPILATION_CACHE_DIR'
DEFAULT_MIN_COMPILE_SECS = 0.0
HIT_EVENT = '/jax/compilation_cache/cache_hits'
# Every executable JAX obtains, compiled or read from the cache (jax._src.dispatch).
OBTAIN_EVENT = '/jax/core/compile/backend_compile_duration'


def default_dir():
  """~/.cache/stvit_jax/xla, under $XDG_CACHE_HOME when that is set."""
  root = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  return os.path.join(root, 'stvit_jax', 'xla')


def resolve(directory=None):
  """The cache folder for a setting (see the module docstring), or None for off."""
  if directory is None:
    return os.environ.get(ENV) or default_dir()
  if not isinstance(directory, str):
    raise ValueError(f'config.compilation_cache_dir={directory!r} must be a path, gs://..., '
                     "'' (off) or None (the default folder)")
  if not directory:
    return None
  return directory if '://' in directory else os.path.abspath(os.path.expanduser(directory))


def enable(directory=None, min_compile_secs=DEFAULT_MIN_COMPILE_SECS):
  """Points JAX's persistent cache at `resolve(directory)` (or turns it off); returns the
  folder or None. Call before the first compile: JAX opens its cache once, on the first
  compile that may use it, so later calls only set what that first open reads."""
  if min_compile_secs is None or min_compile_secs < 0:
    raise ValueError(f'config.compilation_cache_min_compile_secs={min_compile_secs!r} must be '
                     '>= 0 (seconds of compile time below which nothing is cached)')
  path = resolve(directory)
  jax.config.update('jax_enable_compilation_cache', path is not None)
  if path is not None:
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_secs))
    # Small executables too: the floor above is the one knob that decides.
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return path


class Counts:
  """Executables compiled and read from the cache while open, from JAX's monitoring
  events: `with Counts() as c: step(...)`, then `c.describe()` says what that call did
  (with the cache off every executable counts as compiled)."""
  _lock = threading.Lock()
  _open = []  # the Counts objects now counting
  _registered = False

  def __init__(self):
    self.obtained = self.hits = 0

  @property
  def compiled(self):
    return self.obtained - self.hits

  @classmethod
  def _count(cls, field):
    with cls._lock:
      for counts in cls._open:
        setattr(counts, field, getattr(counts, field) + 1)

  @classmethod
  def _on_event(cls, event, **_):
    if event == HIT_EVENT:
      cls._count('hits')

  @classmethod
  def _on_duration(cls, event, duration, **_):
    del duration
    if event == OBTAIN_EVENT:
      cls._count('obtained')

  def __enter__(self):
    with Counts._lock:
      if not Counts._registered:  # JAX keeps listeners for the process: register once
        jax.monitoring.register_event_listener(Counts._on_event)
        jax.monitoring.register_event_duration_secs_listener(Counts._on_duration)
        Counts._registered = True
      Counts._open.append(self)
    return self

  def __exit__(self, *exc):
    with Counts._lock:
      Counts._open.remove(self)

  def describe(self):
    """'compiled', 'loaded from the cache', 'compiled 2, loaded 5 from the cache' or
    'no compile' (the executable was already in memory)."""
    if self.hits and self.compiled:
      return f'compiled {self.compiled}, loaded {self.hits} from the cache'
    if self.hits:
      return 'loaded from the cache'
    return 'compiled' if self.compiled else 'no compile'


def add_flag(parser):
  """--compilation_cache_dir for a tool's argparse parser; pass its value to `enable`."""
  parser.add_argument('--compilation_cache_dir', default=None, metavar='DIR',
                      help="XLA's persistent compilation cache: a folder or gs:// path, '' "
                           f'for off (default: ${ENV}, else {default_dir()})')
