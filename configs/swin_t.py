"""STViT-R-Swin-T on ImageNet-1k, 300 epochs from scratch (docs/models.md section 7).

Expected: STViT-R-Swin-T not reported in the paper; `:baseline` (Swin-T) 81.3 top-1 at 4.5 GMACs;
`:local` (STViT-Swin-T, semantic tokens without recovery) not reported in the paper.

  python -m stvit_jax.main --config=configs/swin_t.py --workdir=gs://BUCKET/stvit_r_swin_t
  python -m stvit_jax.main --config=configs/swin_t.py:baseline --workdir=gs://BUCKET/swin_t
  python -m stvit_jax.main --config=configs/swin_t.py:local --workdir=gs://BUCKET/stvit_swin_t
  python -m stvit_jax.main --config=configs/swin_t.py:runlocal --workdir=/tmp/smoke  # smoke test

Variants (comma separated): baseline, local, runlocal. `--config.a.b=v` overrides any field.
"""
from stvit_jax.train import defaults


def get_config(arg=None):
  return defaults.imagenet('stvit_r_swin_tiny', baseline_name='swin_tiny', arg=arg,
                         drop_path_rate=0.2, extra_variants={'local': 'stvit_swin_tiny'})
