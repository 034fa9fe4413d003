"""Evaluation: top-1, top-5 and loss over a whole split, every example counted once.

The eval iterator pads its last batch and marks padding rows with mask 0
(data contract); sums are masked on device and the count is checked against
the split size, so a pipeline that drops or repeats examples fails loudly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stvit_jax.runtime import sharding, xla_cpu


def inputs_key(batch):
  """The key of the model's input in a batch (or batch spec): its one entry besides
  'label' and 'mask' ('image', 'video': the dataset table's example spec)."""
  keys = [k for k in batch if k not in ('label', 'mask')]
  if len(keys) != 1:
    raise ValueError(f'a batch holds one input besides label / mask; got keys {list(batch)}')
  return keys[0]


def model_input(batch):
  """The model's input of a batch: 'video' clips or 'image's."""
  return batch[inputs_key(batch)]


def view_probabilities(apply_fn, variables, views):
  """(b, V, ...) views of b videos -> (b, classes) softmax averaged over the V views."""
  b, v = views.shape[:2]
  logits = apply_fn(variables, views.reshape(b * v, *views.shape[2:])).astype(jnp.float32)
  return jax.nn.softmax(logits.reshape(b, v, -1)).mean(axis=1)


def make_eval_step(apply_fn, *, num_classes, mesh, variable_shardings,
                   cpu_library=xla_cpu.INFERENCE):
  """jit(eval_step)(variables, batch) -> masked sums {loss, top1, top5, count}.

  `apply_fn(variables, inputs) -> logits` runs the model in inference mode.
  A video batch with a views axis, (b, V, T, H, W, 3) (data/video.py), is scored
  per video by the softmax probabilities averaged over its V views (docs/video.md:
  4 clips x 3 crops); the loss is then -log of the averaged probability.
  """
  k = min(5, num_classes)

  def eval_step(variables, batch):
    labels, valid = batch['label'], batch['mask'] > 0
    x = model_input(batch)
    if 'video' in batch and x.ndim == 6:
      scores = view_probabilities(apply_fn, variables, x)
      picked = jnp.take_along_axis(scores, labels[:, None], axis=1)[:, 0]
      loss = -jnp.log(jnp.maximum(picked, jnp.finfo(jnp.float32).tiny))
    else:
      scores = apply_fn(variables, x).astype(jnp.float32)
      loss = optax.softmax_cross_entropy_with_integer_labels(scores, labels)
    hits = jax.lax.top_k(scores, k)[1] == labels[:, None]
    return {
        'loss': jnp.sum(jnp.where(valid, loss, 0.0)),
        'top1': jnp.sum(valid & hits[:, 0], dtype=jnp.int32),
        'top5': jnp.sum(valid & jnp.any(hits, axis=1), dtype=jnp.int32),
        'count': jnp.sum(valid, dtype=jnp.int32),
    }

  return jax.jit(eval_step,
                 in_shardings=(variable_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh),
                 compiler_options=xla_cpu.compiler_options(cpu_library, mesh=mesh))


def evaluate(eval_step, variables, batches, mesh, *, expected_count=None):
  """Runs `eval_step` over the host-local `batches`; returns python numbers.

  Sums stay on device until the end (no host sync per batch); int32 counts
  are exact.
  """
  totals = None
  for batch in batches:
    out = eval_step(variables, sharding.to_global(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:
    raise ValueError('the eval iterator yielded no batches; check config.data.eval_split')
  totals = jax.tree.map(np.asarray, jax.device_get(totals))
  count = int(totals['count'])
  if expected_count is not None and count != expected_count:
    raise RuntimeError(f'evaluation saw {count} examples but the split has {expected_count}: '
                       'the eval iterator dropped or repeated examples')
  return {'top1': int(totals['top1']) / count, 'top5': int(totals['top5']) / count,
          'loss': float(totals['loss']) / count, 'num_examples': count}
