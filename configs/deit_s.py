"""STViT-DeiT-S on ImageNet-1k, 300 epochs from scratch (docs/models.md section 7).

Expected: STViT-DeiT-S 79.8 top-1 at 1.91 GMACs; `:baseline` (dense DeiT-S) 79.8 top-1 at 4.6 GMACs.

  python -m stvit_jax.main --config=configs/deit_s.py --workdir=gs://BUCKET/stvit_deit_s
  python -m stvit_jax.main --config=configs/deit_s.py:baseline --workdir=gs://BUCKET/deit_s
  python -m stvit_jax.main --config=configs/deit_s.py:runlocal --workdir=/tmp/smoke  # smoke test

Variants (comma separated): baseline, runlocal. `--config.a.b=v` overrides any field.
"""
from stvit_jax.train import defaults


def get_config(arg=None):
  return defaults.imagenet('stvit_deit_small', baseline_name='deit_small', arg=arg,
                         drop_path_rate=0.1)
