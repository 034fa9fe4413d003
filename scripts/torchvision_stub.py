"""An import stub for torchvision, for the scripts that use timm on CPU.

timm imports torchvision at import time and there is no CPU torchvision wheel
for the pinned torch here; the ViT and Swin classes never call it. Any use of a
stubbed class raises.
"""
import importlib.abc
import importlib.machinery
import sys
import types


def install():
  """Makes `import torchvision` succeed with a stub when it is not installed; True if stubbed."""
  try:
    import torchvision  # noqa: F401
    return False
  except ImportError:
    pass

  class Meta(type):
    def __getattr__(cls, name):
      if name.startswith('__'):
        raise AttributeError(name)
      return f'{cls.__name__}.{name}'

  class Missing(metaclass=Meta):
    def __init__(self, *args, **kwargs):
      raise RuntimeError('torchvision is stubbed (scripts/torchvision_stub.py)')

  def getattr_(name):
    if name.startswith('__'):
      raise AttributeError(name)
    return type(name, (Missing,), {})

  class Loader(importlib.abc.Loader):
    def create_module(self, spec):
      module = types.ModuleType(spec.name)
      module.__path__, module.__getattr__ = [], getattr_
      return module

    def exec_module(self, module):
      pass

  class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
      if name == 'torchvision' or name.startswith('torchvision.'):
        return importlib.machinery.ModuleSpec(name, Loader(), is_package=True)
      return None

  sys.meta_path.insert(0, Finder())
  return True
