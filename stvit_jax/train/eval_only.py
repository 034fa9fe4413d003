"""Evaluation-only runs: the weights of `config.init_from` on the config's eval split.

    python -m stvit_jax.main --config=configs/swin_s.py --config.init_from=pretrained \
        --config.mode=eval --workdir=runs/eval_stvit_r_swin_s

`init_from` is anything the trainer accepts (`pretrained`, hf://..., https://...,
a converted directory, an earlier run's workdir). Nothing is trained and no
checkpoint is written: the workdir gets `metrics.jsonl` / TensorBoard (split
'eval', step 0) and `eval.json` with the measured top-1 / top-5 / loss beside
the catalogue's expected top-1 for these weights (weights/catalogue.py), which
applies to the dataset it names (the full ImageNet validation set at 224 px).
The model's class count must match the dataset's: evaluation never replaces a head.
"""
from __future__ import annotations

import json
import os

import jax
from absl import logging
from flax import nnx

from stvit_jax import paths
from stvit_jax.data import device_augment, inputs
from stvit_jax.runtime import sharding
from stvit_jax.train import checkpoint, evaluate, functional, init_from, metric_writer, trainer
from stvit_jax.weights import hub

MODES = ('train', 'eval')


class ModeError(ValueError):
  """config.mode / config.init_from that cannot work; the message names the field."""


def check(config):
  if config.mode not in MODES:
    raise ModeError(f'config.mode={config.mode!r} is not valid; choose one of {list(MODES)}')
  if config.mode == 'eval' and not config.init_from:
    raise ModeError("config.mode='eval' evaluates the weights of config.init_from: set it to "
                     "'pretrained' (the catalogue entry of config.model.name), hf://owner/repo/"
                     "file, https://..., a converted directory or an earlier run's workdir")


def run(config, workdir):
  """Evaluates config.init_from on config.data.eval_split; returns the eval.json record."""
  check(config)
  workdir = paths.absolute(workdir)
  mesh = sharding.make_mesh(config)
  data = inputs.for_kind(functional.input_kind(config))
  info = data.dataset_info(config.data)
  trainer.check_config(config, info, mesh)
  graphdef, abs_params, abs_stats, abs_rngs = functional.split(
      nnx.eval_shape(lambda: functional.create_model(config)))
  params, stats, provenance = init_from.load(  # strict: heads included, nothing initialised
      config, graphdef, abs_params, abs_stats, abs_rngs,
      checkpoint.describe(config, abs_params), replace_head=False)
  variables = {'params': params, 'batch_stats': stats}
  shardings = sharding.tree_shardings(variables, mesh, config.sharding_rules)
  variables = jax.device_put(variables, shardings)
  apply = functional.make_apply(graphdef, functional.placeholder_rngs(abs_rngs))
  eval_step = evaluate.make_eval_step(  # uint8 batches: normalised on device
      lambda v, im: apply(v, device_augment.eval_images(im, config.data), train=False)[0],
      num_classes=info.num_classes, mesh=mesh, variable_shardings=shardings)
  logging.info('evaluating %s from %s on %s %s (%d examples)', config.model.name,
               config.init_from, config.data.name, config.data.eval_split, info.num_eval)
  batches = data.eval_iterator(config.data, global_batch_size=config.eval_batch_size)
  results = evaluate.evaluate(eval_step, variables, batches, mesh, expected_count=info.num_eval)

  entry = hub.expected_top1(config.model.name, config.init_from)
  record = {
      'model': config.model.name, 'init_from': config.init_from,
      'dataset': config.data.name, 'eval_split': config.data.eval_split, **results,
      'expected_top1': round(entry.top1 / 100, 6) if entry and entry.top1 is not None else None,
      'expected_on': entry.dataset if entry else None,
      'expected_source': entry.top1_source if entry else None,
      'weights': provenance,
  }
  writer = metric_writer.MetricWriter(workdir)
  writer.write(0, 'eval', results)
  if writer.active:
    with writer.tf.io.gfile.GFile(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(record, f, indent=1, default=str)
  writer.close()
  expected = (f'; expected {100 * record["expected_top1"]:.2f}% on {entry.dataset} '
              f'({entry.top1_source})' if record['expected_top1'] is not None else '')
  logging.info('%s on %s %s: top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%d examples)%s',
               config.model.name, config.data.name, config.data.eval_split,
               100 * results['top1'], 100 * results['top5'], results['loss'],
               results['num_examples'], expected)
  return record
