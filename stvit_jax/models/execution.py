"""How a built model executes, not what it computes: attention kernel and rematerialisation.

Two options that every model accepts through `models.create(name, attention=...,
remat_policy=...)` (and so every config, as `config.model.attention` /
`config.model.remat_policy`). They change no parameter, no parameter path and
no output value beyond float rounding:

attention
  'explicit'  einsum -> float32 softmax -> einsum; the attention weights are
              returned (aux['stgm_attn'], the visualizer). The default.
  'fused'     `jax.nn.dot_product_attention`: cuDNN flash attention on GPUs
              where it applies, XLA's fused form elsewhere. No weights: the
              STGM entries of aux['stgm_attn'] are None. For training and
              plain inference on accelerators.

remat_policy  (big_vision's `remat_policy`; applied per block: ViT / STViT /
              Swin / Video Swin / STGM blocks)
  'none'                              keep every activation (the default)
  'full'                              keep only each block's input; recompute
                                      the block in the backward pass
  'dots_saveable'                     keep matmul outputs, recompute the rest
                                      (LayerNorm, GELU, softmax)
  'dots_with_no_batch_dims_saveable'  keep the Linear outputs, recompute the
                                      attention matmuls and the rest

scan_layers   (big_vision's `scan`) False: a Python loop over the blocks (the default).
              True: where a stage repeats the same block (Swin / Video Swin stages
              as (regular, shifted) pairs, ViT blocks), the run of repeats is one
              `jax.lax.scan`, so XLA compiles the block once instead of once per
              layer: less compile time and a smaller program for deep models
              (Swin-B stage 3: 9 pairs). Parameters stay per block, under their
              checkpoint names; the scan stacks them in the step (one copy of the
              scanned stage's weights). Each block's drop-path stream advances as
              in the loop, so training draws the same masks.

batch_norm_groups  (not a model option: the trainer sets it from the mesh and
              config.mesh.batch_norm; `layers.BatchNorm` modules hold `stat_groups`)
  1           training statistics of the whole batch (nnx.BatchNorm's)
  G           each of G consecutive groups of rows (a multi-slice mesh's slices)
              normalised by its own statistics: same parameters, other values

Blocks opt in by holding `attention_impl` (attention modules) or `remat_policy`
(blocks, whose `__call__` is wrapped with `rematerialised`); stages by holding
`scan_layers` and running their blocks with `run_blocks`. `configure` sets them on
a built model.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

ATTENTION = ('explicit', 'fused')
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
DEFAULTS = {'attention': 'explicit', 'remat_policy': 'none', 'scan_layers': False}


def check(attention='explicit', remat_policy='none', scan_layers=False):
  if attention not in ATTENTION:
    raise ValueError(f'attention={attention!r} is not valid; choose one of {list(ATTENTION)}')
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f'remat_policy={remat_policy!r} is not valid; choose one of '
                     f'{list(REMAT_POLICIES)}')
  if not isinstance(scan_layers, bool):
    raise ValueError(f'scan_layers={scan_layers!r} is not valid; choose True or False')


def configure(model, *, attention='explicit', remat_policy='none', scan_layers=False):
  """Sets the attention kernel, the remat policy and the layer scan on every module of
  `model` that has one."""
  check(attention, remat_policy, scan_layers)
  for _, module in nnx.iter_modules(model):
    if hasattr(module, 'attention_impl'):
      module.attention_impl = attention
    if hasattr(module, 'remat_policy'):
      module.remat_policy = remat_policy
    if hasattr(module, 'scan_layers'):
      module.scan_layers = scan_layers
  return model


def batch_norm_groups(model, groups):
  """Sets how many groups of the batch (consecutive rows) the BatchNorm layers of `model`
  (`layers.BatchNorm`) take their training statistics from; 1: the whole batch."""
  if not isinstance(groups, int) or groups < 1:
    raise ValueError(f'BatchNorm statistics groups={groups!r} must be an integer >= 1')
  for _, module in nnx.iter_modules(model):
    if hasattr(module, 'stat_groups'):
      module.stat_groups = groups
  return model


def rematerialised(call):
  """Decorates a block's `__call__(self, *arrays, **static)`: with `self.remat_policy`
  other than 'none', the block runs under `nnx.remat` with that policy. Keyword
  arguments (`train`) are static; positional ones are arrays (or None)."""

  @functools.wraps(call)
  def wrapper(self, *args, **kwargs):
    policy = getattr(self, 'remat_policy', 'none')
    if policy == 'none':
      return call(self, *args, **kwargs)
    # jax.checkpoint over the block's state, split and merged by hand: nnx.remat
    # cannot write back the RNG counters that blocks share through one `Rngs`.
    graphdef, state = nnx.split(self)

    def body(state, *arrays):
      module = nnx.merge(graphdef, state)
      return call(module, *arrays, **kwargs), nnx.state(module)

    out, state = jax.checkpoint(body, policy=REMAT_POLICIES[policy])(state, *args)
    nnx.update(self, state)
    return out
  return wrapper


def run_blocks(blocks, x, *, train, scan=False, period=1):
  """x through `blocks` in order. With `scan`, consecutive groups of `period` blocks
  (period 2: Swin's regular and shifted block) that are the same but for their
  `per_block_data` numbers (drop-path rates) run as one `jax.lax.scan` when there
  are two groups or more; other blocks run one by one. Same outputs either way."""
  if not scan:
    for block in blocks:
      x = block(x, train=train)
    return x
  blocks = list(blocks)
  whole = len(blocks) - len(blocks) % period
  groups = [[_split(b) for b in blocks[i:i + period]] for i in range(0, whole, period)]
  start = 0
  while start < len(groups):
    kind = [graphdef for graphdef, _, _ in groups[start]]
    end = start + 1
    while end < len(groups) and [g for g, _, _ in groups[end]] == kind:
      end += 1
    if end - start > 1:
      x = _scan(blocks[start * period:end * period], groups[start:end], x, train)
    else:
      for block in blocks[start * period:end * period]:
        x = block(x, train=train)
    start = end
  for block in blocks[whole:]:
    x = block(x, train=train)
  return x


def _holders(block):
  return [m for _, m in nnx.iter_modules(block) if getattr(type(m), 'per_block_data', ())]


def _split(block):
  """(graphdef without the per-block numbers, (params, other state), those numbers).

  The numbers are blanked on a copy: `block` may belong to an outer trace (a model
  closed over by `jax.jit`), where it must not be mutated."""
  graphdef, params, rest = nnx.split(block, nnx.Param, ...)
  data = [getattr(m, a) for m in _holders(block) for a in type(m).per_block_data]
  copy = nnx.merge(graphdef, params, rest)
  _set_data(copy, [None] * len(data))
  return nnx.graphdef(copy), (params, rest), data


def _set_data(block, values):
  values = iter(values)
  for m in _holders(block):
    for a in type(m).per_block_data:
      setattr(m, a, next(values))


def _scan(blocks, groups, x, train):
  """One jax.lax.scan over `groups` (each a list of `_split` blocks of one period)."""
  period = len(groups[0])
  stack = lambda *xs: jnp.stack(xs)  # noqa: E731
  params = [jax.tree.map(stack, *[g[j][1][0] for g in groups]) for j in range(period)]
  rest = [jax.tree.map(stack, *[g[j][1][1] for g in groups]) for j in range(period)]
  data = [jnp.asarray([g[j][2] for g in groups], jnp.float32).reshape(len(groups), -1)
          for j in range(period)]
  graphdefs = [groups[0][j][0] for j in range(period)]

  def body(x, xs):
    new_rest = []
    for graphdef, p, r, d in zip(graphdefs, *xs):
      block = nnx.merge(graphdef, p, r)
      _set_data(block, d)
      x = block(x, train=train)
      new_rest.append(nnx.state(block, nnx.Not(nnx.Param)))  # the advanced rng streams
    return x, new_rest

  x, new_rest = jax.lax.scan(body, x, (params, rest, data))
  if not train:  # only training draws from (advances) the streams; nothing to write back
    return x
  for i in range(len(groups)):  # write each block's advanced streams back, as the loop would
    for j in range(period):
      nnx.update(blocks[i * period + j], jax.tree.map(lambda a, i=i: a[i], new_rest[j]))
  return x
