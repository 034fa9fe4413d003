"""STViT on DeiT (docs/models.md section 3): the paper's headline global model.

patch embed -> `num_base_layers` DeiT blocks on all image tokens -> STGM
(`stgm_depth` SBlocks that turn pooled centres into semantic tokens, keys are
the image tokens) -> SBlocks on the semantic tokens only -> LN -> mean -> head.
`blocks` holds all `depth` layers in order, as in the official code.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stvit_jax.models import layers, vit

POOLING = ('weighted', 'avg', 'max')


def window_padding(n, k):
  """Zero padding (before, after) that lets an n-grid split into k equal windows."""
  total = -(-n // k) * k - n
  return total // 2, total - total // 2


@layers.static_table
def padding_bias(grid, k):
  """(k*k, s*s) additive bias: -100 on the zero padding of each pooling window."""
  pad = window_padding(grid, k)
  padded = grid + sum(pad)
  valid = np.zeros((1, padded, padded, 1), np.float32)
  valid[:, pad[0]:pad[0] + grid, pad[0]:pad[0] + grid] = 1
  return (1 - layers.window_partition(valid, padded // k)[..., 0]) * -100.0


class WeightedPool(nnx.Module):
  """Intra-window score-weighted pooling [reconstructed, docs/models.md section 3].

  The grid is zero padded so that it splits into k x k windows (14 -> 16 for
  k = 4). A score map (DWConv3x3 -> LN -> GELU -> Conv1x1) is computed over the
  padded grid, padded positions get -100, and each window's tokens are
  averaged with the softmax of their scores: one centre per window.
  """

  def __init__(self, dim, grid, k, *, dtype, rngs):
    self.k, self.pad = k, window_padding(grid, k)
    self.dwconv = nnx.Conv(dim, dim, (3, 3), padding=1, feature_group_count=dim,
                           dtype=dtype, rngs=rngs)
    self.norm = layers.layer_norm(dim, eps=1e-6, rngs=rngs)
    self.score = nnx.Conv(dim, 1, (1, 1), use_bias=False, dtype=dtype, rngs=rngs)
    self.grid, self.window = grid, (grid + sum(self.pad)) // k

  def __call__(self, grid):
    """(B, n, n, C) -> (B, k*k, C) centres and the (B, k*k, s*s) pooling weights."""
    b, _, _, c = grid.shape
    x = jnp.pad(grid, ((0, 0), self.pad, self.pad, (0, 0)))
    s = self.score(layers.gelu(self.norm(layers.depthwise_conv(self.dwconv, x))))
    s = s.astype(jnp.float32)
    s = layers.window_partition(s, self.window).reshape(b, self.k * self.k, -1, 1)
    pad_bias = padding_bias(self.grid, self.k).reshape(1, self.k * self.k, -1, 1)
    w = jax.nn.softmax(s + pad_bias, axis=2)
    tokens = layers.window_partition(x, self.window).reshape(b, self.k * self.k, -1, c)
    return jnp.sum(w * tokens, axis=2), w[..., 0]


class STViT(nnx.Module):
  """STViT-DeiT. Takes (B, H, W, 3) images, returns (logits, aux)."""

  def __init__(self, *, embed_dim=384, num_heads=6, depth=12, patch_size=16, img_size=224,
               num_classes=1000, mlp_ratio=4.0, num_base_layers=4, stgm_depth=2,
               num_semantic=16, pooling='weighted', use_global_init=True,
               class_token=False, layer_scale_init=1e-5, drop_rate=0.0,
               drop_path_rate=0.0, dtype=jnp.float32, rngs):
    layers.check_choice('pooling', pooling, POOLING)
    k = int(round(num_semantic ** 0.5))
    if k * k != num_semantic:
      raise ValueError(f'num_semantic={num_semantic} must be a square number '
                       '(e.g. 9, 16, 36, 64): semantic tokens are initialised on a grid')
    if stgm_depth < 1 or num_base_layers < 0 or num_base_layers + stgm_depth > depth:
      raise ValueError(f'need stgm_depth >= 1 and num_base_layers + stgm_depth <= depth={depth};'
                       f' got num_base_layers={num_base_layers}, stgm_depth={stgm_depth}')
    if img_size % patch_size:
      raise ValueError(f'img_size={img_size} must be a multiple of patch_size={patch_size}')
    self.img_size, self.grid = img_size, img_size // patch_size
    if k > self.grid:
      raise ValueError(f'num_semantic={num_semantic} needs a grid of at least {k}x{k} '
                       f'tokens; img_size={img_size} gives {self.grid}x{self.grid}')
    self.k, self.pooling, self.class_token = k, pooling, class_token
    self.num_base_layers, self.stgm_depth = num_base_layers, stgm_depth

    self.patch_embed = vit.PatchEmbed(patch_size, embed_dim, dtype=dtype, rngs=rngs)
    self.cls_token = (nnx.Param(layers.dense_init(rngs.params(), (1, 1, embed_dim)))
                      if class_token else None)
    self.pos_embed = vit.pos_embed_param(self.grid ** 2 + int(class_token), embed_dim, rngs)
    self.pos_drop = nnx.Dropout(drop_rate, rngs=rngs)
    self.pool = (WeightedPool(embed_dim, self.grid, k, dtype=dtype, rngs=rngs)
                 if pooling == 'weighted' else None)
    self.global_init = (nnx.Param(layers.dense_init(rngs.params(), (1, num_semantic, embed_dim)))
                        if use_global_init else None)
    dpr = layers.drop_path_rates(drop_path_rate, depth)
    common = dict(mlp_ratio=mlp_ratio, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List(
        [layers.Block(embed_dim, num_heads, drop_path=dpr[i], **common)
         for i in range(num_base_layers)] +
        [layers.SBlock(embed_dim, num_heads, drop_path=dpr[i],
                       layer_scale_init=layer_scale_init, **common)
         for i in range(num_base_layers, depth)])
    self.norm = layers.layer_norm(embed_dim, eps=1e-6, rngs=rngs)
    self.head = layers.linear(embed_dim, num_classes, dtype=jnp.float32, rngs=rngs)

  def initial_centres(self, x):
    """Spatial pooling of the image-token grid to k*k centres (raster order)."""
    b, n, c = x.shape
    grid = x.reshape(b, self.grid, self.grid, c)
    if self.pool is not None:
      return self.pool(grid)
    pooled = layers.adaptive_pool(grid, self.k, self.pooling)
    return pooled.reshape(b, self.k * self.k, c), None

  def __call__(self, images, *, train=False):
    vit.check_image_size(images, self.img_size, type(self).__name__)
    x = self.patch_embed(images)
    if self.class_token:
      x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1])), x], 1)
    x = self.pos_drop(x + self.pos_embed[...], deterministic=not train)
    for block in self.blocks[:self.num_base_layers]:
      x = block(x, train=train)
    cls, x = (x[:, :1], x[:, 1:]) if self.class_token else (None, x)

    centres, pool_weights = self.initial_centres(x)
    s = centres if cls is None else jnp.concatenate([cls, centres], 1)
    stgm_attn = []
    stgm = self.blocks[self.num_base_layers:self.num_base_layers + self.stgm_depth]
    for i, block in enumerate(stgm):
      if i == 0:  # layer 1: centres query the image tokens
        s, attn = block(s, x, train=train)
      else:  # later layers: queries get the global init G, keys [S, X]
        q = s if i > 1 or self.global_init is None else s + self._global_init(cls)
        s, attn = block(q, jnp.concatenate([s, x], 1), train=train)
      stgm_attn.append(attn)
    semantic_tokens = s
    for block in self.blocks[self.num_base_layers + self.stgm_depth:]:
      s, _ = block(s, train=train)
    s = self.norm(s)
    pooled = s[:, 0] if self.class_token else jnp.mean(s, axis=1)
    aux = {'semantic_tokens': semantic_tokens, 'initial_centres': centres,
           'stgm_attn': stgm_attn, 'features': s}
    if pool_weights is not None:
      aux['pool_weights'] = pool_weights
    return self.head(pooled), aux

  def _global_init(self, cls):
    g = self.global_init[...]
    if cls is not None:  # the class token gets no global init
      g = jnp.concatenate([jnp.zeros_like(g[:, :1]), g], 1)
    return g
