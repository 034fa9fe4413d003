"""STViT-R-Swin-B on ImageNet-1k, 300 epochs from scratch (docs/models.md section 7).

Expected: STViT-R-Swin-B 83.21 top-1 at 10.26 GMACs; `:baseline` (Swin-B) 83.5 top-1 at 15.4 GMACs;
`:local` (STViT-Swin-B, semantic tokens without recovery) not reported in the paper.

  python -m stvit_jax.main --config=configs/swin_b.py --workdir=gs://BUCKET/stvit_r_swin_b
  python -m stvit_jax.main --config=configs/swin_b.py:baseline --workdir=gs://BUCKET/swin_b
  python -m stvit_jax.main --config=configs/swin_b.py:local --workdir=gs://BUCKET/stvit_swin_b
  python -m stvit_jax.main --config=configs/swin_b.py:runlocal --workdir=/tmp/smoke  # smoke test

Variants (comma separated): baseline, local, runlocal. `--config.a.b=v` overrides any field.
"""
from stvit_jax.train import defaults


def get_config(arg=None):
  return defaults.imagenet('stvit_r_swin_base', baseline_name='swin_base', arg=arg,
                         drop_path_rate=0.5, extra_variants={'local': 'stvit_swin_base'})
