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
              Swin / STGM blocks)
  'none'                              keep every activation (the default)
  'full'                              keep only each block's input; recompute
                                      the block in the backward pass
  'dots_saveable'                     keep matmul outputs, recompute the rest
                                      (LayerNorm, GELU, softmax)
  'dots_with_no_batch_dims_saveable'  keep the Linear outputs, recompute the
                                      attention matmuls and the rest

Blocks opt in by holding `attention_impl` (attention modules) or `remat_policy`
(blocks, whose `__call__` is wrapped with `rematerialised`); `configure` sets them
on a built model.
"""
from __future__ import annotations

import functools

import jax
from flax import nnx

ATTENTION = ('explicit', 'fused')
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
DEFAULTS = {'attention': 'explicit', 'remat_policy': 'none'}


def check(attention='explicit', remat_policy='none'):
  if attention not in ATTENTION:
    raise ValueError(f'attention={attention!r} is not valid; choose one of {list(ATTENTION)}')
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f'remat_policy={remat_policy!r} is not valid; choose one of '
                     f'{list(REMAT_POLICIES)}')


def configure(model, *, attention='explicit', remat_policy='none'):
  """Sets the attention kernel and the remat policy on every module of `model` that has one."""
  check(attention, remat_policy)
  for _, module in nnx.iter_modules(model):
    if hasattr(module, 'attention_impl'):
      module.attention_impl = attention
    if hasattr(module, 'remat_policy'):
      module.remat_policy = remat_policy
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
