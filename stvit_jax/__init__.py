"""stvit_jax: Semantic Token Vision Transformers (STViT) in JAX / Flax NNX.

    import stvit_jax
    model = stvit_jax.create('stvit_r_swin_small', pretrained=True)   # with weights
    model = stvit_jax.models.create('stvit_deit_small')              # architecture only

The package layout and its layers: docs/architecture.md.
"""
from stvit_jax.weights.factory import create

__all__ = ['create']
