"""Keep freed memory in the process on CPU, so XLA:CPU's buffers are not page-faulted anew.

XLA:CPU allocates every call's temporaries (and outputs) with `posix_memalign` from
its worker threads. glibc serves those threads from per-thread arenas whose freed
tops it hands back to the kernel (`madvise` / trim), and serves blocks of more
than 32 MiB with `mmap` / `munmap`; either way the next call touches fresh pages
and the kernel zeroes each 4 KiB on first touch. Measured here (2-core EPYC,
float32, one thread): a ReLU over 12608x1536 took 59 ms of CPU with 18,900 page
faults, 13 ms without; deit_small's forward at batch 16 faulted ~25,000 pages
(100 MiB) per call and ran ~10% faster without the faults.

`keep_freed_memory()` sets glibc's malloc options at run time (`mallopt`), the
same as GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:
glibc.malloc.trim_threshold=2147483647 before start-up: one arena, no mmap
blocks, no trimming. The cost is that the process keeps its peak heap, and every
thread shares one arena. It is called by the speed tools (`stvit_jax.tools.benchmark`,
`scripts/bench_timm.py`, where PyTorch's allocations benefit alike); training
leaves the allocator alone (tf.data threads allocate concurrently). A no-op
where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util

# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
kept = False  # whether this process keeps freed memory (set by keep_freed_memory)


def keep_freed_memory():
  """Returns True when glibc accepted all three settings, False where there is no glibc.

  Call it before importing JAX: threads started earlier may keep arenas of their own
  (measured: 13,100 instead of 3,300 faulted pages per call of a 64 MiB temporary).
  """
  global kept
  name = ctypes.util.find_library('c')
  try:
    libc = ctypes.CDLL(name or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1))
  kept = all(mallopt(param, value) == 1 for param, value in settings)
  return kept
