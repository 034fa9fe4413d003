"""Model zoo: DeiT, Swin, STViT-DeiT, STViT-R-Swin, STViT-Swin, by name; families in registry."""
from stvit_jax.models.registry import (FAMILIES, Family, create, dense_counterpart,
                                       example_input, family, family_of, names, options)

__all__ = ['FAMILIES', 'Family', 'create', 'dense_counterpart', 'example_input', 'family',
           'family_of', 'names', 'options']
