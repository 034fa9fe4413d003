"""STViT on Video Swin-S, Kinetics-400, from an inflated ImageNet-1k Swin-S (docs/video.md).

Expected (paper, Table 6, against Video Swin-S's 80.6 top-1 at 165.9 GMACs per
32x224x224 view, 4x3 views): about 80.3 top-1 at about 121 GMACs per view.
`:baseline` is Video Swin-S itself. STViT's placement in Video Swin is a
reconstruction (docs/video.md section 2); its options are `config.model.*`.

  # 1. convert your Kinetics-400 download (CVDF layout) once, in parallel:
  python -m stvit_jax.data.builders.kinetics --name kinetics400 --manual_dir ~/k400 \
      --data_dir gs://BUCKET/tensorflow_datasets --workers 32
  # 2. train and evaluate (4 clips x 3 crops) on a TPU VM or pod:
  python -m stvit_jax.main --config=configs/video_swin_s.py --workdir=gs://BUCKET/stvit_video_swin_s \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets --config.init_from=WEIGHTS
  python -m stvit_jax.main --config=configs/video_swin_s.py:baseline --workdir=gs://BUCKET/video_swin_s ...
  python -m stvit_jax.main --config=configs/video_swin_s.py:runlocal --workdir=/tmp/smoke  # smoke test

WEIGHTS: ImageNet-1k Swin-S converted for the video model with inflation
(patch-embed kernel repeated over the 2 temporal taps / 2, bias tables repeated
15x; stvit_jax.weights.convert). Recipe: AdamW lr 1e-3 (backbone x0.1), weight decay
0.02, 30 epochs, 2.5 warm-up, batch 64 clips, drop path 0.1 (mmaction2 1.x: 0.2), no mixup; train
clips 32 frames stride 2, RandomResizedCrop 224 + flip, one box per clip.
Variants (comma separated): baseline, runlocal. `--config.a.b=v` overrides any field.
"""
from stvit_jax.train import defaults


def get_config(arg=None):
  return defaults.kinetics('stvit_video_swin_small', baseline_name='video_swin_small', arg=arg,
                         drop_path_rate=0.1)
