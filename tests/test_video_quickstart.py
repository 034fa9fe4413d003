"""configs/video_quickstart.py: its model fits the semantic-token stage on the 32x32
canvas, and its variants."""

import jax
import jax.numpy as jnp
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


def test_the_semantic_token_stage_runs_on_the_canvas():
  """The STGM needs a 14x14 stage-3 grid: the config's clip size and patches give it,
  and the semantic tokens (16 per 7x7 window, 64 per frame) are really made."""
  config = video_quickstart.get_config()
  shape = (1, config.data.num_frames, config.data.image_size, config.data.image_size, 3)

  def forward():
    return functional.create_model(config)(jnp.zeros(shape), train=False)

  logits, aux = nnx.eval_shape(forward)  # traced, not computed: cheap
  assert logits.shape == (1, 8)
  frames = config.data.num_frames // config.model.patch_size[0]
  assert [s.shape for s in aux['semantic_tokens']] == [(1, frames, 64, 4 * config.model.embed_dim)]
  model = nnx.eval_shape(lambda: functional.create_model(config))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) < 1e6
