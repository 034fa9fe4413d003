"""STViT-DeiT-T on ImageNet-1k, 300 epochs from scratch (docs/models.md section 7).

Expected: STViT-DeiT-T not reported in the paper; `:baseline` (dense DeiT-T) 72.2 top-1 at 1.3 GMACs.

  python -m stvit_jax.main --config=configs/deit_t.py --workdir=gs://BUCKET/stvit_deit_t
  python -m stvit_jax.main --config=configs/deit_t.py:baseline --workdir=gs://BUCKET/deit_t
  python -m stvit_jax.main --config=configs/deit_t.py:runlocal --workdir=/tmp/smoke  # smoke test

Variants (comma separated): baseline, runlocal. `--config.a.b=v` overrides any field.
"""
from stvit_jax.train import defaults


def get_config(arg=None):
  return defaults.imagenet('stvit_deit_tiny', baseline_name='deit_tiny', arg=arg,
                         drop_path_rate=0.1)
