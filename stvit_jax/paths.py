"""Paths as orbax wants them: absolute, whether local or a URL (gs://...)."""
import os


def absolute(path):
  """A local path made absolute (orbax rejects relative ones); URLs are returned as given
  (os.path.abspath would turn 'gs://b/run' into '<cwd>/gs:/b/run')."""
  path = os.fspath(path)
  return path if '://' in path else os.path.abspath(path)
