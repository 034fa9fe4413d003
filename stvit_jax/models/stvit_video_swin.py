"""STViT on Video Swin (docs/video.md section 2): a RECONSTRUCTION.

The paper only says that semantic tokens are generated for each frame, in
Video Swin T / S. Here stage 3 is the image STViT-Swin stage
(`stvit_swin.SemanticStage`, reused) with time folded into the batch:
(B, D, 14, 14, C) -> (B*D, 196, C). Every placement choice is an option:

  stgm_after         ordinary 3D Swin blocks before the STGM (no recovery)
  tokens_per_window  9 or 16 semantic tokens per 7x7 window
  semantic_scope     'frame': global semantic blocks attend within a frame;
                     'clip': across all D frames' semantic tokens
  recovery           STViT-R dumbbell units (3D Swin block, STGM, local, global,
                     recovery to the 14x14 map); stage 4 then sees all tokens
  stgm_residual      STGM layer 1 adds its pooled centres back (not in the
                     official block; for training from scratch, see
                     stvit_swin.WindowSemanticInit)

Swin blocks inside stage 3 stay 3D (window (8, 7, 7), shifts as in Video
Swin) so that these layers keep their Video Swin weights; without recovery
the 8x8 (or 6x6) semantic grid of each frame is merged to stage 4, whose
window clamps to it as Video Swin clamps any small input.
"""
from __future__ import annotations

from stvit_jax.models import layers, stvit_swin, video_swin


class VideoSemanticStage(stvit_swin.SemanticStage):
  """The image STViT stage 3 run per frame; Swin blocks are 3D."""

  def __init__(self, dim, depth, num_heads, grid, *, window, semantic_scope='frame',
               **kwargs):
    layers.check_choice('semantic_scope', semantic_scope, ('frame', 'clip'))
    self.window3d, self.semantic_scope = tuple(window), semantic_scope
    super().__init__(dim, depth, num_heads, grid, window=window[1], **kwargs)

  def make_swin_block(self, i, dim, num_heads, grid, *, window, mlp_ratio, drop_path,
                      dtype, rngs):
    # The same shift pattern as the Video Swin block it replaces (STViT-R units: 0).
    shifted = i % 2 == 1 and not self.recovery
    shift = tuple(w // 2 for w in self.window3d) if shifted else (0, 0, 0)
    return video_swin.SwinBlock3D(dim, num_heads, window=self.window3d, shift=shift,
                                  mlp_ratio=mlp_ratio, drop_path=drop_path, dtype=dtype,
                                  rngs=rngs)

  def swin_step(self, block, x, *, train, frames):
    c = x.shape[-1]
    y = block(x.reshape(-1, frames, *self.grid, c), train=train)
    return y.reshape(x.shape)

  def semantic_step(self, role, block, s, *, train, frames):
    if role == 'global' and self.semantic_scope == 'clip':
      bt, n, c = s.shape
      return block(s.reshape(bt // frames, frames * n, c), train=train)[0].reshape(s.shape)
    return block(s, train=train)[0]

  def __call__(self, x, *, train, aux):
    b, d, h, w, c = x.shape
    if (h, w) != tuple(self.grid):
      raise ValueError(f'STViT stage 3 is built for a {self.grid[0]}x{self.grid[1]} grid per '
                       f'frame; got {h}x{w}: the clip size must be the model\'s img_size')
    before = {k: len(aux.get(k, [])) for k in ('semantic_tokens', 'stgm_attn')}
    out, features = super().__call__(x.reshape(b * d, h * w, c), train=train, aux=aux,
                                     frames=d)
    for key, n in before.items():  # per-frame aux entries: (B*D, ...) -> (B, D, ...)
      aux[key][n:] = [a.reshape(b, d, *a.shape[1:]) for a in aux[key][n:]]
    side = int(round(out.shape[1] ** 0.5))
    out = out.reshape(b, d, side, side, out.shape[-1])
    return out, features.reshape(b, d, *features.shape[1:])


class STViTVideoSwin(video_swin.VideoSwinTransformer):
  """Video Swin with STViT stage 3 per frame (defaults: no recovery, 16 tokens)."""

  def __init__(self, *, recovery=False, tokens_per_window=None, stgm_after=None,
               semantic_scope='frame', layer_scale_init=1e-5, stgm_residual=False,
               **kwargs):
    if tokens_per_window is None:
      tokens_per_window = 9 if recovery else 16
    if stgm_after is None:
      stgm_after = 1
    super().__init__(recovery=recovery, tokens_per_window=tokens_per_window,
                     stgm_after=stgm_after, semantic_scope=semantic_scope,
                     layer_scale_init=layer_scale_init, stgm_residual=stgm_residual,
                     **kwargs)

  def make_stage(self, index, dim, depth, num_heads, *, recovery, tokens_per_window,
                 stgm_after, semantic_scope, layer_scale_init, stgm_residual, **kwargs):
    if index != 2:
      return video_swin.VideoSwinStage(dim, depth, num_heads, **kwargs)
    side = self.img_size // (self.patch_size[1] * 4)  # stage-3 grid: patch, then 2 merges
    return VideoSemanticStage(dim, depth, num_heads, (side, side), recovery=recovery,
                              tokens_per_window=tokens_per_window, stgm_after=stgm_after,
                              semantic_scope=semantic_scope,
                              layer_scale_init=layer_scale_init,
                              stgm_residual=stgm_residual, **kwargs)

  def check_input(self, clips):
    super().check_input(clips)
    if tuple(clips.shape[2:4]) != (self.img_size, self.img_size):
      raise ValueError(f'{type(self).__name__} takes clips (B, T, {self.img_size}, '
                       f'{self.img_size}, 3) (img_size={self.img_size}: the STGM windows '
                       f'need the 14x14 stage-3 grid); got {tuple(clips.shape)}')
