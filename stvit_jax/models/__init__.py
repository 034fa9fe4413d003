"""Model zoo: DeiT, Swin, STViT-DeiT, STViT-R-Swin, STViT-Swin, by name."""
from stvit_jax.models.registry import create, names, options

__all__ = ['create', 'names', 'options']
