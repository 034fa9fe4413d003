"""Why a video quickstart run learns or stays at chance: the STGM and logit statistics.

  python scripts/video_quickstart_diagnose.py --seed 2 --stgm_residual 0 --steps 0 50

For each number of training steps (0 = at initialisation) the quickstart model
(configs/video_quickstart.py, `--seed`, `--stgm_residual`) is trained that far with the
quickstart's own trainer (a fresh workdir per count) and measured on one fixed training
batch (16 clips, model in eval mode):

  stgm1 entropy    STGM layer 1's attention entropy over its keys, divided by log(#keys):
                   1.000 is uniform attention (every centre of a window the same mix)
  window spread    the spread of the semantic tokens (after the STGM) inside each 7x7
                   window relative to their rms: 0 means the t x t tokens of a window
                   are one vector repeated
  logit spread     the std over the batch of each class's logit, averaged over classes:
                   near 0, the prediction does not depend on the input
  grad norms       per block, of the training loss on that batch (train mode)

Not part of CI: the data is the embedded moving-digits set, prepared on first use.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configs import video_quickstart  # noqa: E402  pylint: disable=g-import-not-at-top
from stvit_jax.data import video  # noqa: E402
from stvit_jax.train import checkpoint, loop  # noqa: E402
from stvit_jax.train.functional import create_model, split  # noqa: E402


def config_for(seed, residual, steps):
  config = video_quickstart.get_config()
  config.seed = seed
  config.model.stgm_residual = bool(residual)
  config.total_steps = steps
  config.eval_every_steps = 0
  config.checkpoint_every_steps = steps
  config.log_every_steps = max(steps, 1)
  return config


def trained_model(config, steps, workdir):
  model = create_model(config)
  if steps == 0:
    return model
  loop.train_and_evaluate(config, workdir)
  graphdef, params, stats, rest = split(model)
  meta = checkpoint.describe(config, params)
  params, stats, _ = checkpoint.load_run_params(workdir, params, stats, meta)
  return nnx.merge(graphdef, params, stats, rest)


def block_names(path):
  """Top-level block of a parameter path: 'layers.2.blocks.1', 'patch_embed', 'head'."""
  keys = [str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path]
  if keys[0] == 'layers' and len(keys) > 3 and keys[2] == 'blocks':
    return '.'.join(keys[:4])
  return '.'.join(keys[:2]) if keys[0] == 'layers' else keys[0]


def measure(model, batch):
  clips, labels = jnp.asarray(batch['video']), jnp.asarray(batch['label'])
  logits, aux = model(clips, train=False)
  weights = np.asarray(aux['stgm_attn'][0], np.float64)  # (B, D, nW, heads, q, k)
  entropy = -(weights * np.log(np.maximum(weights, 1e-30))).sum(-1)
  entropy = float(entropy.mean() / math.log(weights.shape[-1]))
  s = np.asarray(aux['semantic_tokens'][0], np.float64)  # (B, D, (nw*t)^2, C)
  side = int(round(s.shape[2] ** 0.5))
  stage = model.layers[2]
  t = stage.blocks[stage.stgm_after].t  # tokens per window side
  nw = side // t
  s = s.reshape(*s.shape[:2], nw, t, nw, t, s.shape[-1])
  spread = s.std(axis=(3, 5)).mean() / np.sqrt((s ** 2).mean())
  logit_spread = float(np.asarray(logits, np.float64).std(0).mean())

  def loss_fn(m):
    out, _ = m(clips, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(nnx.clone(model))
  norms = {}
  for path, g in jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param)):
    norms[block_names(path)] = norms.get(block_names(path), 0.0) + float(jnp.sum(g ** 2))
  return dict(loss=float(loss), entropy=entropy, spread=float(spread),
              logit_spread=logit_spread, grads={k: v ** 0.5 for k, v in norms.items()})


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--stgm_residual', type=int, choices=(0, 1), default=1)
  parser.add_argument('--steps', type=int, nargs='+', default=[0, 50])
  args = parser.parse_args(argv)
  base = config_for(args.seed, args.stgm_residual, 1)
  batch = next(video.train_iterator(base.data, global_batch_size=16, seed=1234))
  for steps in args.steps:
    config = config_for(args.seed, args.stgm_residual, steps)
    with tempfile.TemporaryDirectory() as workdir:
      m = measure(trained_model(config, steps, workdir), batch)
    grads = '  '.join(f'{k} {v:.2e}' for k, v in sorted(m['grads'].items()))
    print(f'seed {args.seed} stgm_residual {args.stgm_residual} step {steps}: '
          f'loss {m["loss"]:.4f}  stgm1 entropy {m["entropy"]:.3f}  window spread '
          f'{m["spread"]:.2e}  logit spread {m["logit_spread"]:.3f}\n  grad norms: {grads}',
          flush=True)


if __name__ == '__main__':
  main()
