"""Experiment configs: `python -m stvit_jax.main --config=configs/deit_s.py[:variants]`.

Each file defines `get_config(arg=None)` on top of stvit_jax.train.defaults and
imports only stvit_jax, so it loads from any working directory. The wheel ships
this folder as the package `stvit_jax.configs`: a `--config` path that does not
exist relative to the working directory is looked up here (the log names the
file used), so `--config=configs/quickstart.py` works from an installed package.
"""
import os

DIRECTORY = os.path.dirname(os.path.abspath(__file__))


def names():
  """The bundled config files, e.g. ['deit_b.py', 'deit_s.py', ...]."""
  return sorted(f for f in os.listdir(DIRECTORY) if f.endswith('.py') and f != '__init__.py')
