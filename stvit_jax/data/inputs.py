"""Which input pipeline reads a model's data: the one dispatch by input kind.

Images go through `pipeline` (the dataset table, sharding, resumable iterators),
clips through `video` (clip sampling and views on the same sharding and resume).
Both expose `dataset_info`, `steps_per_epoch`, `train_iterator` and `eval_iterator`,
and each checks that config.data names a dataset of its kind (an image dataset for a
video model, or the reverse, stops with the field to change).
"""
from stvit_jax.data import pipeline, video

PIPELINES = {'image': pipeline, 'video': video}


def for_kind(input_kind):
  """The pipeline module for 'image' or 'video' inputs (a model family's input_kind)."""
  if input_kind not in PIPELINES:
    raise ValueError(f'input kind {input_kind!r} has no pipeline; valid: {sorted(PIPELINES)}')
  return PIPELINES[input_kind]
