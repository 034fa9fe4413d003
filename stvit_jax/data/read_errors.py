"""A prepared dataset that fails to read, as one user error naming the data.

tf.data reports a damaged TFDS dataset in its own terms, deep in a traceback:
`DataLossError: corrupted record at 870823` (no file), `NotFoundError: PATH; No
such file or directory`, `InvalidArgumentError: Unknown image file format` (no
file, no record). None of these is a bug to debug: the files must be prepared
again. `named(iterator, ...)` turns them into `DataError` (exit 2 through cli):
the dataset and split, the file (or, where TensorFlow does not say which, the
shards this process was reading), what is wrong, and the command that prepares
the dataset again. The original error stays chained, shown by `--verbose`.

Only errors that say the data is bad are translated; an InvalidArgumentError of
a transform (a shape, a dtype) is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import os
import re

import tensorflow as tf

from stvit_jax import cli
from stvit_jax.data import datasets

SHOWN_FILES = 3  # shards named in the message; the rest are counted

# InvalidArgumentError texts of the image and frame decoders (decode_image / png /
# jpeg / and_crop_jpeg, gif, bmp) and of parsing a record that is not an Example.
_UNDECODABLE = re.compile(
    r'Unknown image file format|Input is empty|Invalid (PNG|JPEG|GIF|BMP) data|'
    r'(jpeg|png|gif|bmp|image).*(corrupt|truncat|premature|decode)|Could not parse example|'
    r'Not a JPEG file|Invalid JPEG', re.IGNORECASE)
_OFFSET = re.compile(r'(corrupted|truncated) record at (\d+)')


class DataError(cli.UserError):
  """A prepared dataset's files cannot be read; the message names them and the fix."""


def is_data_error(error):
  """Whether a tf.data error says the dataset's files or examples are bad."""
  if isinstance(error, (tf.errors.DataLossError, tf.errors.NotFoundError)):
    return True
  return isinstance(error, tf.errors.InvalidArgumentError) and bool(
      _UNDECODABLE.search(error.message or ''))


def named(iterator, cfg, builder, split):
  """Yields from `iterator`; a data error becomes DataError naming cfg.name, `split` (this
  process's share, as tfds reads it) and its files."""
  with translated(cfg, builder, split):
    yield from iterator


@contextlib.contextmanager
def translated(cfg, builder, split):
  """Data errors raised inside (a tf.data `reduce` filling a cache, an iterator's next) as
  DataError; any other error unchanged."""
  try:
    yield
  except tf.errors.OpError as e:
    if not is_data_error(e):
      raise
    raise DataError(describe(e, cfg, builder, split)) from e


def describe(error, cfg, builder, split):
  """One line: which data, what is wrong with it, and how to prepare it again."""
  what = clean(error.message or type(error).__name__)
  files = shard_files(builder, split)
  named_file = next((f for f in files if f in (error.message or '')), None)
  if isinstance(error, tf.errors.NotFoundError):
    where = ''  # its message is the missing path already
    what = what.replace('; No such file or directory', ': no such file')
  elif named_file:
    where = f' in {named_file}'
  else:
    where = _candidates(error, files)
  kind = 'an undecodable example' if isinstance(error, tf.errors.InvalidArgumentError) else \
      'a damaged or missing file'
  split_name = getattr(split, 'split', split)  # tfds' process share keeps the split's name
  return (f'dataset {cfg.name!r} split {split_name!r} has {kind}: {what}{where}; prepare it '
          f'again with `{datasets.prepare_command(cfg, builder)}`, then rerun')


def shard_files(builder, split):
  """The files tfds reads for `split` (a name or this process's share of one)."""
  try:
    return sorted({os.fspath(f.filename) for f in builder.info.splits[split].file_instructions})
  except Exception:  # pylint: disable=broad-except  (the message is still worth having)
    return []


def _candidates(error, files):
  """' in FILE' or ' (in one of the N shards being read: A, B, ... )': a record offset
  rules out the files shorter than it."""
  found = _OFFSET.search(error.message or '')
  if found:
    offset = int(found.group(2))
    files = [f for f in files if not os.path.exists(f) or os.path.getsize(f) >= offset] or files
  if len(files) == 1:
    return f' in {files[0]}'
  if not files:
    return ''
  shown = ', '.join(files[:SHOWN_FILES]) + (f' and {len(files) - SHOWN_FILES} more'
                                           if len(files) > SHOWN_FILES else '')
  return f' (TensorFlow does not say which file; the {len(files)} shards being read: {shown})'


def clean(text):
  """TensorFlow's message without its internals: the wrapped-function and node names,
  the op, the status code, anything after the first line."""
  text = (text or '').strip().splitlines()[0] if (text or '').strip() else ''
  text = re.sub(r'\{\{[^}]*\}\}', '', text)
  text = re.sub(r'\[\[[^\]]*\]\]|\[Op:[^\]]*\]( name:\s*\S*)?', '', text)
  text = re.sub(r'^[A-Z_]+: ', '', text.strip())
  text = re.sub(r"' failed with ", ': ', text)  # 'truncated record at N' failed with ...
  return ' '.join(text.split()).rstrip('. ') or 'unreadable'
