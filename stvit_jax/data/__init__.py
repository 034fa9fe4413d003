"""Input pipelines (tf.data + TFDS), TF-native augmentation and on-device Mixup/CutMix.

`datasets` (the table: builder, transforms, example spec per dataset), `pipeline`
(sharding, resumable iterators, the same for every dataset), `preprocess` (per-example
transforms), `augment` (RandAugment), `mixup` (pure jnp, no TF), `digits` (the
embedded `stvit_digits` TFDS builder), `defaults` (config fields).
"""
