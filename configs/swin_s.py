"""STViT-R-Swin-S on ImageNet-1k, 300 epochs from scratch (docs/models.md section 7).

Expected: STViT-R-Swin-S 82.65 top-1 at 5.83 GMACs; `:baseline` (Swin-S) 83.0 top-1 at 8.7 GMACs;
`:local` (STViT-Swin-S, semantic tokens without recovery) not reported in the paper.

  python -m stvit_jax.main --config=configs/swin_s.py --workdir=gs://BUCKET/stvit_r_swin_s
  python -m stvit_jax.main --config=configs/swin_s.py:baseline --workdir=gs://BUCKET/swin_s
  python -m stvit_jax.main --config=configs/swin_s.py:local --workdir=gs://BUCKET/stvit_swin_s
  python -m stvit_jax.main --config=configs/swin_s.py:runlocal --workdir=/tmp/smoke  # smoke test

Variants (comma separated): baseline, local, runlocal. `--config.a.b=v` overrides any field.
"""
from stvit_jax.train import defaults


def get_config(arg=None):
  return defaults.imagenet('stvit_r_swin_small', baseline_name='swin_small', arg=arg,
                         drop_path_rate=0.3, extra_variants={'local': 'stvit_swin_small'})
