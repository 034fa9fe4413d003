"""Weights: reading and writing them, and where they come from.

`store` (orbax weight directories with provenance.json, strict loading), `hub`
(addresses: the catalogue word `pretrained`, hf://, https://; download, convert and
cache once), `catalogue` (the known weights per model), `layouts` (PyTorch name maps
per family and layout), `convert` and `convert_video` (state_dict -> model weights),
`torch_files` (.pth / .safetensors / .npz readers), `pos_embed` (resizing), and
`factory` (`stvit_jax.create(name, pretrained=...)`: the one "model with weights").
Above the models (architectures only), below the trainer and the tools.
"""
