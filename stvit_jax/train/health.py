"""Finiteness of training, tracked on device, read by the host only when it matters.

Each train step reports `finite` (its loss and gradient norm are finite) and
`step` (the step it ran). `Health.update` folds them into two device scalars
without waiting for the step: the first step that went bad (a min-reduced step
counter; BIG while all are finite) and how many non-finite updates were
skipped. The host reads them at log steps and before every save (`first_bad`),
so a diverged state is never saved and the error names the first bad step,
not the next log step.

With `config.optim.skip_nonfinite = N > 0` the train step leaves the state
unchanged on a non-finite step (as optax.apply_if_finite does) and only a run
of more than N consecutive non-finite steps counts as bad.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stvit_jax import cli

BIG = np.iinfo(np.int32).max


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _fold(max_skips, carry, finite, step):
  first_bad, streak, skipped = carry
  streak = jnp.where(finite, 0, streak + 1)
  bad = streak > max_skips
  first_bad = jnp.minimum(first_bad, jnp.where(bad, step, BIG))
  skipped = skipped + jnp.where(finite | bad, 0, 1)
  return first_bad, streak, skipped


class Health:
  """Device-side record of the steps run so far (see module doc)."""

  def __init__(self, max_skips=0):
    self.max_skips = int(max_skips)
    self.carry = (jnp.int32(BIG), jnp.int32(0), jnp.int32(0))

  def update(self, metrics):
    """Folds one step's metrics in: dispatch only, no host sync."""
    self.carry = _fold(self.max_skips, self.carry, metrics['finite'], metrics['step'])

  def first_bad(self):
    """The first step whose update was non-finite (and not skipped), or None. Syncs."""
    first = int(jax.device_get(self.carry[0]))
    return None if first == BIG else first

  def skipped(self):
    """Non-finite updates skipped so far in this process's run. Syncs."""
    return int(jax.device_get(self.carry[2]))


def step_metrics(step, loss, grad_norm):
  """What a train step adds to its metrics for `Health`: `finite` and `step` (1-based)."""
  return {'finite': jnp.isfinite(loss) & jnp.isfinite(grad_norm),
          'step': (step + 1).astype(jnp.int32)}


def keep_if_finite(finite, new, old):
  """`new` where the step was finite, else `old` (leaf by leaf): a skipped update."""
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def log_scalars(fetched):
  """Means over the steps since the last log; loss and grad norm over finite steps only
  (a skipped update's NaN would hide the others)."""
  finite = [bool(m['finite']) for m in fetched]
  scalars = {}
  for k in fetched[0]:
    if k in ('finite', 'step'):
      continue
    values = [float(m[k]) for m, ok in zip(fetched, finite) if ok or k == 'lr']
    scalars[k] = float(np.mean(values)) if values else float('nan')
  return scalars


def check_finite(tracker, ckpt, fetched=()):
  """Raises cli.Diverged naming the first non-finite step and the last good checkpoint."""
  first = tracker.first_bad()
  if first is None:
    return
  values = ''
  for m in jax.device_get(list(fetched)):
    if int(m['step']) == first:
      values = f' (loss {float(m["loss"])}, gradient norm {float(m["grad_norm"])})'
  good = ckpt.latest_step()
  where = (f'the last good checkpoint is step {good} in {ckpt.directory}; rerunning resumes '
           'from it' if good is not None else 'no checkpoint was saved')
  raise cli.Diverged(
      f'training diverged: the loss or gradient norm became non-finite at step {first}'
      f'{values}; nothing after it was saved; {where}. Lower config.optim.lr or raise '
      'config.optim.warmup_*, or set config.optim.skip_nonfinite=N to skip up to N '
      'consecutive non-finite updates')
