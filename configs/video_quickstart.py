"""Video quickstart: a small STViT video model on embedded moving digits, on a CPU in minutes.

  python -m stvit_jax.main --config=configs/video_quickstart.py --workdir=runs/video_quickstart
  python -m stvit_jax.main --config=configs/video_quickstart.py:frame --workdir=runs/video_frame

STATUS: NOT YET A WORKING QUICKSTART. The model and data run end to end
(train, 3-view evaluation, the `:frame` single-frame baseline), but on this
data no video transformer tried so far learns within a CPU budget: measured
here, this config at 4 epochs (248 steps; --config.model.layer_scale_init=1.0;
243 s wall / 246 CPU-s on a loaded machine) ends at 12.5% top-1 (chance), with
the default layer scale its train loss is still 2.09 (ln 8 = 2.08) after 4
epochs, and plain Video Swin variants (32 px,
patches 2x4x4 and 2x2x2, widths 16-32, lr 3e-4 to 5e-3) stay at chance for
300-1,450 steps, while a 2-layer 3D CNN on the same batches reaches 77% train
accuracy in 300 steps. Nothing here reports an expected accuracy until one is
measured.

The 8 classes are motions (4 directions x 2 speeds) and any single frame is
equally likely under each of them (tests/test_video_data.py), so only motion
tells them apart; `:frame` shows the same model one frame per clip.
Evaluation: 3 clips x 1 crop per video, softmax averaged (the canvas is
square, so every crop along the long side is the whole frame).
`stvit_moving_digits` (data/moving_digits.py): 1,000 train / 240 validation
videos of a digit moving across a 32x32 canvas, written as real mp4 files in
the Kinetics layout and converted by the Kinetics builder on first use (92 s
here, offline).

The model is `stvit_video_swin_tiny` shrunk, with the semantic-token stage in
place: the STGM's 7x7 windows and 10x10 key patches need a 14x14 stage-3 grid,
so clips are 56x56 (the canvas upsampled) with 1x1-pixel patches (2 frames
deep) and no Swin blocks before stage 3 (its two merges only pool 4x4 pixel
cells). Stage 3: one 3D Swin block, the 2-layer STGM (16 semantic tokens per
7x7 window, 64 per frame) and one local semantic block; stage 4: one block on
the merged 4x4 semantic grid. From scratch: no backbone lr multiplier.
Variants (comma separated): frame, runlocal. `--config.a.b=v` overrides any field.
"""
from configs import common

NUM_FRAMES = 4  # 2 frames apart: a span of 7 of the 24 frames


def get_config(arg=None):
  chosen = common.parse_variants(arg, ('frame', 'runlocal'))
  config = common.video_base(
      'stvit_video_swin_tiny', dataset='stvit_moving_digits', num_classes=8, img_size=56,
      num_frames=NUM_FRAMES, patch_size=(2, 1, 1), window_size=(2, 7, 7), embed_dim=12,
      depths=(0, 0, 4, 1), num_heads=(1, 1, 2, 4), stgm_after=1, drop_path_rate=0.0,
      head_drop_rate=0.0)
  config.data.eval_clips, config.data.eval_crops = 3, 1
  # `:frame`: every clip is one sampled frame repeated (train and eval): the
  # single-frame baseline of the same model and recipe.
  config.data.single_frame = 'frame' in chosen
  config.batch_size = 16  # 62 steps per epoch
  config.eval_batch_size = 40  # 240 videos, 3 views each
  config.total_epochs = 12.0
  config.warmup_epochs = 1.0
  config.eval_every_epochs = 6.0
  config.checkpoint_every_epochs = 6.0
  config.log_every_steps = 62
  config.optim.backbone_lr_mult = 1.0  # trained from scratch, not fine-tuned
  config.optim.lr = 2e-3 * config.optim.lr_base_batch / config.batch_size  # peak 2e-3
  config.optim.warmup_lr = 1e-5
  config.optim.weight_decay = 0.05
  if 'runlocal' in chosen:  # the same code for a few steps: a smoke test
    config.data.train_split = 'train[:32]'
    config.data.eval_split = 'validation[:8]'
    config.data.eval_clips = 2
    config.batch_size, config.eval_batch_size = 8, 4
    config.total_epochs, config.warmup_epochs = 1.0, 0.25  # 4 steps
    config.eval_every_epochs = config.checkpoint_every_epochs = 1.0
    config.log_every_steps = 1
  return config
