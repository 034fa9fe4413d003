"""stvit_jax: Semantic Token Vision Transformers (STViT) in JAX / Flax NNX.

    import stvit_jax
    model = stvit_jax.create('stvit_r_swin_small', pretrained=True)   # with weights
    model = stvit_jax.models.create('stvit_deit_small')              # architecture only

The package layout and its layers: docs/architecture.md.
"""
from stvit_jax import cli
from stvit_jax.runtime import quiet_logs

# TensorFlow (the input pipeline, the weights store) prints its notices when imported:
# import it here, quietly, unless --verbose (runtime/quiet_logs.py).
quiet_logs.import_tensorflow(cli.verbose())

from stvit_jax.weights.factory import create  # noqa: E402  pylint: disable=g-import-not-at-top

__all__ = ['create']
