"""STViT-DeiT-B on ImageNet-1k, 300 epochs from scratch (docs/models.md section 7).

Expected: STViT-DeiT-B not reported in the paper; `:baseline` (dense DeiT-B) 81.8 top-1 at 17.6 GMACs.

  python -m stvit_jax.main --config=configs/deit_b.py --workdir=gs://BUCKET/stvit_deit_b
  python -m stvit_jax.main --config=configs/deit_b.py:baseline --workdir=gs://BUCKET/deit_b
  python -m stvit_jax.main --config=configs/deit_b.py:runlocal --workdir=/tmp/smoke  # smoke test

Variants (comma separated): baseline, runlocal. `--config.a.b=v` overrides any field.
"""
from stvit_jax.train import defaults


def get_config(arg=None):
  return defaults.imagenet('stvit_deit_base', baseline_name='deit_base', arg=arg,
                         drop_path_rate=0.1)
