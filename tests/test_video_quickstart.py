"""configs/video_quickstart.py: its model fits the semantic-token stage on the 32x32
canvas, and its variants."""

import jax
import numpy as np
import pytest
from flax import nnx


from stvit_jax.configs import video_quickstart  # noqa: E402
from stvit_jax import models  # noqa: E402
from stvit_jax.train import functional


def test_variants_build_the_stvit_video_model():
  config = video_quickstart.get_config()
  assert config.model.name == 'stvit_video_swin_tiny' and functional.input_kind(config) == 'video'
  assert set(config.model) - {'name', 'dtype'} == set(models.options(config.model.name)) - {
      'dtype'}
  d = config.data
  assert d.name == 'stvit_moving_digits' and not d.single_frame
  assert d.eval_clips * d.eval_crops > 1  # multi-view evaluation
  assert d.image_size == config.model.img_size and d.num_frames == config.model.num_frames
  assert config.mixup.prob == 0 and config.optim.backbone_lr_mult == 1.0  # from scratch
  # motion within the 3D conv stem's reach: consecutive frames
  assert config.model.conv_stem and d.frame_stride == 1
  frame = video_quickstart.get_config('frame')
  assert frame.data.single_frame and frame.model == config.model  # same model, one frame
  small = video_quickstart.get_config('frame,runlocal')
  assert small.data.single_frame and small.batch_size == 8
  with pytest.raises(ValueError, match=r"unknown config variant.*'frame', 'runlocal'"):
    video_quickstart.get_config('frames')
  doc = video_quickstart.__doc__
  assert '--config=configs/video_quickstart.py ' in doc
  assert '--config=configs/video_quickstart.py:frame ' in doc


def window_spread(tokens, t):
  """Spread of the semantic tokens inside each window relative to their rms, float64:
  0 when the t x t tokens of every window are one vector repeated."""
  s = np.asarray(tokens, np.float64)
  side = int(round(s.shape[2] ** 0.5))
  s = s.reshape(*s.shape[:2], side // t, t, side // t, t, s.shape[-1])
  return s.std(axis=(3, 5)).mean() / np.sqrt((s ** 2).mean())


@pytest.mark.parametrize('stgm_residual', [True, False])
def test_the_semantic_token_stage_runs_on_the_canvas(stgm_residual):
  """The STGM needs a 14x14 stage-3 grid: the config's clip size and patches give it,
  and the semantic tokens (16 per 7x7 window, 64 per frame) are really made: distinct
  within each window at initialisation with the config's `stgm_residual`, where the
  official block (no residual) starts them as one vector per window (uniform attention
  gives every centre the same mix), the stall the quickstart had from scratch."""
  config = video_quickstart.get_config()
  assert config.model.stgm_residual  # the quickstart trains from scratch
  config.model.stgm_residual = stgm_residual
  shape = (2, config.data.num_frames, config.data.image_size, config.data.image_size, 3)
  clips = jax.random.normal(jax.random.key(0), shape)
  model = functional.create_model(config)
  logits, aux = model(clips, train=False)
  assert logits.shape == (2, 8)
  frames = config.data.num_frames // config.model.patch_size[0]
  [tokens] = aux['semantic_tokens']
  assert tokens.shape == (2, frames, 64, 4 * config.model.embed_dim)
  # stage 3's STGM layer 1 attention: rows sum to 1 over the 16 centres + 100 keys
  attn = np.asarray(aux['stgm_attn'][0], np.float64)
  assert attn.shape[-2:] == (16, 116)
  np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
  spread = window_spread(tokens, 4)
  if stgm_residual:
    assert spread > 0.1, spread
  else:  # 0.007 on these random clips, 2e-4 on the moving digits (docs/video.md section 2)
    assert spread < 1e-2, spread
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) < 1e6
