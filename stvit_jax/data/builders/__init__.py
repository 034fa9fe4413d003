"""TFDS dataset builders and their preparation: `digits` (the embedded stvit_digits),
`moving_digits` (the embedded video set), `kinetics` (Kinetics-400/600/700 from your
download: `python -m stvit_jax.data.builders.kinetics`, with `video_convert` for the
video files) and `imagenet_like` (a small ImageNet-shaped dataset for input benchmarks)."""
