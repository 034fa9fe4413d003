"""A training run's directory as the weights of a tool (predict, visualize).

    model, provenance = run_weights.create('runs/quickstart')            # as it evaluated
    model, provenance = run_weights.create('runs/quickstart', raw=True)  # not the EMA

The run says what it trained: the model name and constructor options come from its
`config.json`, the weights from its newest readable, finite checkpoint through the
trainer's own loader (`checkpoint.load_run_params`, which `config.init_from` uses), the
EMA parameters when the run kept and evaluated them. A tool's own `--model` / `--set`
are then only checked against the run's: a mismatch is an error naming both.
"""
from __future__ import annotations

import json
import os

from flax import nnx

from stvit_jax import cli, models
from stvit_jax.train import checkpoint, functional

CONFIG = 'config.json'


class RunMismatch(cli.UserError):
  """A tool's --model / --set differ from what the run trained; the message names both."""


def is_run(directory):
  """Whether `directory` is a training run's workdir (its config.json and checkpoints/)."""
  return bool(directory) and os.path.isfile(os.path.join(directory, CONFIG)) and \
      checkpoint.is_run_checkpoint(directory)


def read_config(directory):
  with open(os.path.join(directory, CONFIG)) as f:
    return json.load(f)


def model_of(run_config):
  """(name, constructor options) of the run's model; JSON lists back to tuples (Swin's
  depths, window sizes)."""
  model = dict(run_config['model'])
  name = model.pop('name')
  model.pop('dtype', None)
  return name, {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}


def check_request(directory, run_name, run_options, name=None, overrides=None, flag='--set'):
  """Raises RunMismatch if `name` or an override differs from (or is unknown to) the run."""
  if name is not None and name != run_name:
    raise RunMismatch(f'--model {name} but the run in {directory} trained {run_name}; '
                      f'drop --model (the run names it) or use --model {run_name}')
  for key, value in (overrides or {}).items():
    if key not in run_options:
      raise RunMismatch(f'{flag} {key}={value!r}: the run in {directory} has no model option '
                        f'{key!r}; its options: {", ".join(sorted(run_options))}')
    have = run_options[key]
    if value != have and not (isinstance(have, tuple) and tuple(value or ()) == have):
      raise RunMismatch(f'{flag} {key}={value!r} but the run in {directory} trained '
                        f'{key}={have!r}; drop {flag} {key} (the run sets it) or use '
                        f'{key}={have!r}')


def uses_ema(run_config):
  """Whether the run kept EMA parameters, which its evaluation then measured (eval_ema)."""
  return float(run_config.get('ema_decay') or 0) > 0


def create(directory, *, name=None, overrides=None, raw=False, dtype=None):
  """(model, provenance) of the run in `directory`: its model with the weights its
  evaluation used (EMA when it kept them; `raw`: the trained parameters)."""
  run_config = read_config(directory)
  run_name, options = model_of(run_config)
  check_request(directory, run_name, options, name, overrides)
  model = models.create(run_name, dtype=dtype or run_config['model'].get('dtype', 'float32'),
                        **options)
  graphdef, params, stats, rest = functional.split(model)
  meta = {'model': run_name, 'param_shapes': checkpoint.param_shapes(params)}
  params, stats, provenance = checkpoint.load_run_params(
      directory, params, stats, meta, ema=uses_ema(run_config) and not raw)
  return nnx.merge(graphdef, params, stats, rest), provenance
