"""Input pipelines (tf.data + TFDS), TF-native augmentation and on-device Mixup/CutMix.

`pipeline` (datasets, sharding, resumable iterators), `preprocess` (per-example
transforms), `augment` (RandAugment), `mixup` (pure jnp, no TF), `digits` (the
embedded `stvit_digits` TFDS builder), `defaults` (config fields).
"""
