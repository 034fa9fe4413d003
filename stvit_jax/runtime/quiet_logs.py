"""A quiet start for the command line: the project's lines, not the libraries' chatter.

Without --verbose, the trainer's log keeps every record of stvit_jax itself and the
libraries' warnings and errors, and drops:

  * the libraries' INFO records (TFDS's "Load dataset info ...", "Constructing
    tf.data.Dataset ...", JAX's "Unable to initialize backend 'tpu'" on a machine
    without one, orbax's hundred lines per checkpoint save);
  * their deprecation warnings (TensorFlow's "calling map_fn_v2 ... is deprecated",
    TFDS's "`TensorInfo.dtype` is deprecated"): meant for the code's authors;
  * TensorFlow's own C++ INFO lines, by TF_CPP_MIN_LOG_LEVEL=1 (a user's own setting
    stands), and its notices at import (oneDNN, CPU features), which it writes before
    that setting applies: `import_tensorflow`, called when stvit_jax is imported.

Orbax's errors keep their first line and lose their tracebacks: a failed save ends the
run in one `error:` line of ours. `--verbose` keeps everything.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile

OWN = os.sep + 'stvit_jax' + os.sep


# TensorFlow's notices at import, written by its C++ code to the process's stderr
# before its logging is configured (so TF_CPP_MIN_LOG_LEVEL cannot hide them).
IMPORT_NOTICES = ('All log messages before absl::InitializeLog() is called',
                  'oneDNN custom operations are on', 'cpu_feature_guard.cc',
                  'To enable the following instructions', 'rebuild TensorFlow with')


def import_tensorflow(verbose):
  """Imports TensorFlow with its C++ INFO lines off (TF_CPP_MIN_LOG_LEVEL=1 unless the
  user set it) and its import notices dropped; anything else it writes to stderr while
  importing is passed on. With `verbose`, a plain import."""
  if verbose:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as caught:  # a file, not a pipe: it never fills
    os.dup2(caught.fileno(), 2)
    try:
      import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      caught.seek(0)
      for line in caught.read().decode(errors='replace').splitlines(keepends=True):
        if not any(notice in line for notice in IMPORT_NOTICES):
          sys.stderr.write(line)


class QuietLibraries(logging.Filter):
  """The filter described above, for absl's handler (which prints every library's
  Python logging records)."""

  def __init__(self, verbose):
    super().__init__()
    self.verbose = verbose

  def filter(self, record):
    if self.verbose or OWN in record.pathname:
      return True
    if record.levelno <= logging.INFO:
      return False
    if record.levelno == logging.WARNING and 'deprecat' in record.getMessage().lower():
      return False
    if '/orbax/' in record.pathname or record.name == 'asyncio':
      record.msg, record.args = (record.getMessage().splitlines() or [''])[0], ()
      record.exc_info = record.exc_text = record.stack_info = None
    return True
