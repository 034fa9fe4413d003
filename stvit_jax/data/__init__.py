"""Input pipelines (tf.data + TFDS), TF-native augmentation and on-device Mixup/CutMix.

`datasets` (the table: builder, transforms, example spec per dataset: the one
dispatch by data.name), `inputs` (the pipeline of a model's input kind), `pipeline`
(images: sharding, resumable iterators, the same for every dataset), `video` (clips
on the same sharding and resume), `preprocess` (per-example transforms), `augment`
(RandAugment), `device_augment` (normalisation and erasing in the jitted step),
`mixup` (pure jnp), `service` (tf.data service), `files` (one image or clip file as
evaluation sees it), `defaults` (config fields); `builders/` the TFDS datasets.
"""
