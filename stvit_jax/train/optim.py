"""Optimizer of docs/models.md section 7: clip(5) -> AdamW with a decay mask, warm-up + cosine."""
from __future__ import annotations

import optax

from stvit_jax import names

# Parameters named like this get no weight decay whatever their rank (timm's
# `no_weight_decay()` of DeiT / Swin / STViT); all rank <= 1 parameters (biases,
# norm scales, LayerScale gammas) get none either.
NO_DECAY_NAMES = frozenset({'pos_embed', 'cls_token', 'dist_token', 'global_init',
                            'relative_position_bias_table'})


def decay_mask(params):
  """Tree of bools like `params`: True where weight decay applies."""
  def decays(name, x):
    return x.ndim >= 2 and not NO_DECAY_NAMES.intersection(name.split('/'))
  return names.map_with_names(decays, params)


def learning_rate(config, total_steps, warmup_steps):
  """Linear warm-up from `warmup_lr` to the batch-scaled peak, cosine to `min_lr`."""
  o = config.optim
  peak = o.lr * config.batch_size / o.lr_base_batch
  if warmup_steps >= total_steps:
    raise ValueError(f'warm-up ({warmup_steps} steps) must be shorter than the run '
                     f'({total_steps} steps); lower warmup_epochs / warmup_steps')
  return optax.warmup_cosine_decay_schedule(
      init_value=o.warmup_lr, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=total_steps, end_value=o.min_lr)


def backbone_mask(params):
  """True for every parameter outside the classification head (`head.*`)."""
  return names.map_with_names(lambda name, _: name.split('/')[0] != 'head', params)


def make(config, schedule):
  o = config.optim
  adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                      mask=decay_mask)
  chain = [adamw]
  # Fine-tuning from a pre-trained backbone (Video Swin's recipe: backbone lr x 0.1):
  # scaling the AdamW update scales its decoupled weight decay too, as a smaller lr does.
  mult = o.get('backbone_lr_mult', 1.0)
  if mult != 1.0:
    chain.append(optax.masked(optax.scale(mult), backbone_mask))
  if o.grad_clip_norm > 0:
    chain.insert(0, optax.clip_by_global_norm(o.grad_clip_norm))
  return chain[0] if len(chain) == 1 else optax.chain(*chain)
