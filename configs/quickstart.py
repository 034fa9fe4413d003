"""Quickstart: a small STViT-DeiT on the embedded handwritten digits, on a CPU in minutes.

  python -m stvit_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Expected: 98.1% top-1 on the 360 test digits (96.1% after 20 epochs), 0.21M
parameters, 1,760 steps of 32. Measured on a quiet 2-core CPU: 516 images/s,
2 min wall time for the whole command (115 s of it in the training loop).
`stvit_digits` is scikit-learn's 1,797 8x8 digits, upsampled to 32x32 RGB; it
prepares itself offline on first use. The recipe is the paper's with lighter
augmentation for tiny images and no horizontal flips (digits are not symmetric).
"""
from stvit_jax.train import defaults


def get_config(arg=None):
  defaults.parse_variants(arg, ())
  config = defaults.base(
      'stvit_deit_tiny', dataset='stvit_digits', num_classes=10, img_size=32,
      # 8x8 patch grid -> 16 semantic tokens (4x4 pooling windows).
      # depth 4 = 1 ViT block, the 2-layer STGM, 1 block on the semantic tokens.
      patch_size=4, embed_dim=64, num_heads=4, depth=4, num_base_layers=1, num_semantic=16,
      drop_path_rate=0.0)
  config.mixup.prob = 0.0  # 1,437 training digits: mixing hurts more than it regularises
  config.batch_size = 32  # small data: more, smaller steps
  config.eval_batch_size = 120  # the 360 test digits in 3 batches
  config.total_epochs = 40.0  # 44 steps each
  config.warmup_epochs = 2.0
  config.eval_every_epochs = 10.0
  config.checkpoint_every_epochs = 10.0
  config.log_every_steps = 100
  config.optim.lr = 2e-3 * 512 / 32  # peak 2e-3 at batch 32
  return config
