"""DeiT baseline (docs/models.md section 2), structured like timm's VisionTransformer.

Parameter paths mirror timm's state_dict names (`patch_embed.proj`,
`blocks.N.attn.qkv`, `head`, ...) so that checkpoints convert by rule.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from stvit_jax.models import execution, layers

# name -> (embed_dim, num_heads); depth 12, patch 16 for all.
VARIANTS = {'tiny': (192, 3), 'small': (384, 6), 'base': (768, 12)}


class PatchEmbed(nnx.Module):
  """Non-overlapping p x p patches -> tokens (B, H/p * W/p, C)."""

  def __init__(self, patch_size, embed_dim, *, dtype, rngs):
    self.patch_size = patch_size
    self.proj = nnx.Conv(3, embed_dim, (patch_size, patch_size), strides=patch_size,
                         padding='VALID', dtype=dtype, rngs=rngs)

  def __call__(self, images):
    x = self.proj(images)
    return x.reshape(x.shape[0], -1, x.shape[-1]).astype(jnp.float32)


def check_image_size(images, img_size, model):
  if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
    raise ValueError(
        f'{model} expects channels-last images (B, H, W, 3); got {images.shape}, which looks '
        'channels-first (B, 3, H, W): transpose it with images.transpose(0, 2, 3, 1).')
  if images.ndim != 4 or images.shape[1:] != (img_size, img_size, 3):
    raise ValueError(
        f'{model} expects images (B, {img_size}, {img_size}, 3); got {images.shape}. '
        f'Build it with img_size={images.shape[1] if images.ndim == 4 else "H"} '
        'to use another resolution.')


def pos_embed_param(num_tokens, dim, rngs):
  return nnx.Param(layers.dense_init(rngs.params(), (1, num_tokens, dim), jnp.float32))


class VisionTransformer(nnx.Module):
  """DeiT: patch tokens + class token (+ distillation token), 12 ViT blocks."""

  def __init__(self, *, embed_dim=384, num_heads=6, depth=12, patch_size=16,
               img_size=224, num_classes=1000, mlp_ratio=4.0, distilled=False,
               drop_rate=0.0, drop_path_rate=0.0, dtype=jnp.float32, rngs):
    if img_size % patch_size:
      raise ValueError(f'img_size={img_size} must be a multiple of patch_size={patch_size}')
    self.img_size, self.distilled = img_size, distilled
    num_prefix = 2 if distilled else 1
    self.patch_embed = PatchEmbed(patch_size, embed_dim, dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(layers.dense_init(rngs.params(), (1, 1, embed_dim)))
    self.dist_token = (nnx.Param(layers.dense_init(rngs.params(), (1, 1, embed_dim)))
                       if distilled else None)
    self.pos_embed = pos_embed_param((img_size // patch_size) ** 2 + num_prefix,
                                     embed_dim, rngs)
    self.pos_drop = nnx.Dropout(drop_rate, rngs=rngs)
    dpr = layers.drop_path_rates(drop_path_rate, depth)
    self.blocks = nnx.List([
        layers.Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, drop_path=dpr[i],
                     dtype=dtype, rngs=rngs) for i in range(depth)])
    self.norm = layers.layer_norm(embed_dim, eps=1e-6, rngs=rngs)
    self.head = layers.linear(embed_dim, num_classes, dtype=jnp.float32, rngs=rngs)
    self.head_dist = (layers.linear(embed_dim, num_classes, dtype=jnp.float32, rngs=rngs)
                      if distilled else None)
    self.scan_layers = False  # models.execution.configure

  def __call__(self, images, *, train=False):
    check_image_size(images, self.img_size, type(self).__name__)
    x = self.patch_embed(images)
    prefix = [self.cls_token[...]] + ([self.dist_token[...]] if self.distilled else [])
    prefix = [jnp.broadcast_to(t, (x.shape[0], 1, x.shape[-1])) for t in prefix]
    x = self.pos_drop(jnp.concatenate(prefix + [x], axis=1) + self.pos_embed[...],
                      deterministic=not train)
    x = execution.run_blocks(self.blocks, x, train=train, scan=self.scan_layers)
    x = self.norm(x)
    logits = self.head(x[:, 0])
    aux = {'features': x}
    if self.distilled:
      # timm at inference averages the two heads; both are kept for distillation.
      aux['logits_cls'], aux['logits_dist'] = logits, self.head_dist(x[:, 1])
      logits = (aux['logits_cls'] + aux['logits_dist']) / 2
    return logits, aux
