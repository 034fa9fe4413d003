"""Mixup / CutMix and label smoothing on device, inside the jitted train step.

Semantics of timm `Mixup(mode='batch')`: one lambda per batch; each image is
mixed with the batch reversed (`images[::-1]`); CutMix pastes one box whose
area corrects lambda (`correct_lam=True`). Pure jnp: the result is a function
of (rng, images, labels) and the static config only.
"""
import jax
import jax.numpy as jnp
import optax


def soft_targets(labels, num_classes, label_smoothing=0.0):
  """timm one-hot with smoothing: off = s / N, on = 1 - s + s / N. float32 (b, N)."""
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)


def _cutmix_box(rng, height, width, lam):
  """timm rand_bbox + lambda correction: (H, W) bool box and the corrected lambda."""
  ky, kx = jax.random.split(rng)
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  ys = jnp.arange(height)[:, None]
  xs = jnp.arange(width)[None, :]
  box = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
  return box, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def mixup_cutmix(rng, images, labels, *, num_classes, cfg):
  """Returns (mixed images in images.dtype, soft targets float32 (b, N)).

  images (b, ..., H, W, C): images, or clips (b, T, H, W, C) whose frames share one box.

  cfg: mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing (static floats).
  """
  mix_a, cut_a = float(cfg.mixup_alpha), float(cfg.cutmix_alpha)
  targets = soft_targets(labels, num_classes, cfg.label_smoothing)
  if cfg.prob <= 0 or (mix_a <= 0 and cut_a <= 0):
    return images, targets
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 5)
  if mix_a > 0 and cut_a > 0:
    use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
  else:
    use_cutmix = jnp.asarray(cut_a > 0)
  lam_mix = jax.random.beta(k_mix, mix_a, mix_a) if mix_a > 0 else 1.0
  lam_cut = jax.random.beta(k_cut, cut_a, cut_a) if cut_a > 0 else 1.0
  apply = jax.random.uniform(k_apply) < cfg.prob
  height, width = images.shape[-3], images.shape[-2]
  box, lam_box = _cutmix_box(k_box, height, width, lam_cut)
  # weight of the original image per pixel: 1 outside / 0 inside the box, or lambda.
  weight = jnp.where(use_cutmix, (~box).astype(jnp.float32), jnp.full(box.shape, lam_mix))
  lam = jnp.where(use_cutmix, lam_box, lam_mix)
  weight = jnp.where(apply, weight, 1.0)
  lam = jnp.where(apply, lam, 1.0).astype(jnp.float32)
  w = weight[:, :, None].astype(images.dtype)  # broadcasts over (b, [T,] H, W, C)
  mixed = images * w + images[::-1] * (1 - w)
  return mixed, targets * lam + targets[::-1] * (1.0 - lam)
