"""Defaults shared by every config: the paper's recipe (docs/models.md section 7).

Each `configs/<model>.py` calls `imagenet(...)` or builds on `base(...)` and
changes only what is specific to it. Variants are the `:arg` of
`--config=configs/deit_s.py:baseline,runlocal` (comma separated).

Durations are given in epochs (`*_epochs`); `*_steps` of the same name wins
when set (>= 0; -1 means unset). `stvit_jax.train.trainer.schedule_steps` converts
them, in one place.
"""
from __future__ import annotations

import ml_collections

from stvit_jax import models
from stvit_jax.data import defaults as data_defaults


def parse_variants(arg, valid):
  """'baseline,runlocal' -> {'baseline', 'runlocal'}; unknown names are an error."""
  chosen = {v for v in (arg or '').replace(':', ',').split(',') if v}
  unknown = chosen - set(valid)
  if unknown:
    raise ValueError(f'unknown config variant(s) {sorted(unknown)}; valid: {sorted(valid)}')
  return chosen


def model_config(name, **overrides):
  """Every constructor option of model `name`, so `--config.model.X=v` can set any of them."""
  options = {k: v for k, v in models.options(name).items() if k != 'dtype'}
  unknown = set(overrides) - set(options)
  if unknown:
    raise ValueError(f'{name} has no option(s) {sorted(unknown)}; valid: {sorted(options)}')
  options.update(overrides)
  # A None default (conv_stem: None = follow `recovery`) would lock the field to NoneType;
  # a typed placeholder keeps it None and lets --config.model.conv_stem=True override it.
  cfg = ml_collections.ConfigDict({'name': name, 'dtype': 'float32'})
  for k, v in options.items():
    cfg[k] = ml_collections.FieldReference(v, field_type=bool) if v is None else v
  return cfg


def base(model_name, *, dataset, num_classes, img_size, **model_overrides):
  """The recipe of docs/models.md section 7 for `model_name` on `dataset`."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(model_name, img_size=img_size, num_classes=num_classes,
                              **model_overrides)

  config.data = data_defaults.data_config(dataset)
  if config.data.data_dir is None:  # a typed placeholder: --config.data.data_dir=... works
    config.data.data_dir = ml_collections.config_dict.placeholder(str)
  config.data.image_size = img_size
  config.mixup = data_defaults.mixup_config()

  config.batch_size = 1024  # global, over all devices and hosts
  config.eval_batch_size = 1024
  config.total_epochs = 300.0
  config.total_steps = -1
  config.warmup_epochs = 20.0
  config.warmup_steps = -1
  config.eval_every_epochs = 10.0  # and at the end; 0 never evaluates
  config.eval_every_steps = -1
  config.checkpoint_every_epochs = 1.0
  config.checkpoint_every_steps = -1
  config.log_every_steps = 100

  config.optim = ml_collections.ConfigDict(dict(
      lr=5e-4,  # at lr_base_batch; scaled linearly with batch_size
      lr_base_batch=512,
      warmup_lr=1e-6,
      min_lr=1e-5,
      b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.05,
      grad_clip_norm=5.0,  # 0 disables
      grad_accum_steps=1,  # micro-batches per optimizer step (scan inside the step)
      # A non-finite loss or gradient norm stops the run (exit 3), naming the step; N > 0
      # instead skips up to N consecutive such updates (counted as skipped_updates).
      skip_nonfinite=0,
  ))
  config.ema_decay = 0.0  # > 0 keeps an exponential moving average of the weights

  config.checkpoint = ml_collections.ConfigDict(dict(keep=3, async_save=True))
  # Params only, from a converted checkpoint (stvit_jax.weights.store), an earlier run's
  # workdir, 'pretrained' (the model's catalogue entry), hf://owner/repo/file or https://...
  # (stvit_jax.weights.hub); a head with another number of classes is replaced by a fresh one.
  config.init_from = ''
  # 'train', or 'eval': evaluate init_from's weights on data.eval_split, train nothing
  # (stvit_jax/train/eval_only.py); `--config.init_from=pretrained --config.mode=eval`.
  config.mode = 'train'
  # Resuming refuses a config change that breaks exact resume (batch size, seed, data,
  # model, optimizer, schedule: stvit_jax/train/runconfig.py) unless its fields are listed
  # here, comma separated ('batch_size,seed'), or 'all'.
  config.resume_allow_changes = ''
  # XLA's persistent compilation cache (stvit_jax/runtime/compile_cache.py): None is
  # $JAX_COMPILATION_CACHE_DIR or ~/.cache/stvit_jax/xla, '' off, else a folder or gs://
  # path shared by all processes; executables that took at least the floor's seconds to
  # compile are kept (0: all, the model's many small initialisation compiles included).
  config.compilation_cache_dir = ml_collections.config_dict.placeholder(str)
  config.compilation_cache_min_compile_secs = 0.0

  # Mesh ('data', 'fsdp'); -1 takes the remaining devices. Parameters are placed by
  # the first matching (regex, rule) on their path; rule 'fsdp' shards the largest
  # dimension divisible by the fsdp size, 'replicate' replicates.
  # data and fsdp describe ONE slice; dcn_data is the number of slices (-1: all found;
  # on CPU/GPU groups of processes stand for slices): the mesh's 'data' axis is
  # dcn_data x data and only the gradient all-reduce crosses between slices
  # (stvit_jax/runtime/sharding.py). batch_norm: where BatchNorm layers (the STViT-R and
  # video conv stems) take their training statistics from, 'slice' (each slice's part of
  # the batch: no traffic between slices in the forward pass) or 'global' (the whole
  # batch: an all-reduce over DCN in every BatchNorm layer). One slice: the same.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, dcn_data=1, batch_norm='slice'))
  config.sharding_rules = (('.*', 'fsdp'),)
  return config


def imagenet(model_name, *, baseline_name, arg, drop_path_rate, extra_variants=None):
  """ImageNet-1k config of `model_name`; `:baseline` swaps in `baseline_name`.

  `extra_variants` maps further variant names to model names (e.g. 'local').
  """
  names = {'baseline': baseline_name, **(extra_variants or {})}
  chosen = parse_variants(arg, set(names) | {'runlocal'})
  picked = [names[v] for v in chosen if v in names]
  if len(picked) > 1:
    raise ValueError(f'variants {sorted(chosen - {"runlocal"})} each pick a model; choose one')
  config = base(picked[0] if picked else model_name, dataset='imagenet2012',
                num_classes=1000, img_size=224, drop_path_rate=drop_path_rate)
  if 'runlocal' in chosen:
    runlocal(config)
  return config


def runlocal(config):
  """The same code on a few examples: a smoke test that runs on a laptop CPU."""
  config.data.train_split = 'train[:32]'
  config.data.eval_split = 'validation[:20]'
  config.data.shuffle_buffer = 32
  config.data.cache = False
  config.batch_size = 8
  config.eval_batch_size = 8
  config.total_epochs = 1.0
  config.warmup_epochs = 0.5
  config.eval_every_epochs = 1.0
  config.checkpoint_every_epochs = 1.0
  config.log_every_steps = 1
  return config


def video_base(model_name, *, dataset, num_classes, img_size, num_frames, **model_overrides):
  """The Video Swin recipe (docs/video.md section 1) for `model_name` on a video dataset.

  AdamW lr 1e-3 at batch 64 with the backbone at x0.1, weight decay 0.02, 30
  epochs with 2.5 of linear warm-up from 0.1 x lr, cosine; plain cross entropy.
  """
  config = base(model_name, dataset='imagenet2012', num_classes=num_classes,
                img_size=img_size, num_frames=num_frames, **model_overrides)
  config.data = data_defaults.video_data_config(dataset)
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  config.data.image_size = img_size
  config.data.num_frames = num_frames
  config.mixup.prob = 0.0
  config.mixup.label_smoothing = 0.0
  config.batch_size = 64  # clips, global
  config.eval_batch_size = 64  # videos, each eval_clips x eval_crops views
  config.total_epochs = 30.0
  config.warmup_epochs = 2.5
  config.eval_every_epochs = 5.0
  config.optim.lr = 1e-3
  config.optim.lr_base_batch = 64
  config.optim.warmup_lr = 1e-4
  config.optim.min_lr = 0.0
  config.optim.weight_decay = 0.02
  config.optim.grad_clip_norm = 0.0
  config.optim.backbone_lr_mult = 0.1
  return config


def kinetics(model_name, *, baseline_name, arg, drop_path_rate, dataset='kinetics400'):
  """Kinetics config of `model_name` (32 x 224 x 224 clips); `:baseline` swaps in `baseline_name`."""
  chosen = parse_variants(arg, {'baseline', 'runlocal'})
  name = baseline_name if 'baseline' in chosen else model_name
  num_classes = int(dataset[len('kinetics'):])
  config = video_base(name, dataset=dataset, num_classes=num_classes, img_size=224,
                      num_frames=32, drop_path_rate=drop_path_rate)
  if 'runlocal' in chosen:
    runlocal(config)
    config.data.eval_split = 'validation[:8]'
    config.data.num_frames = config.model.num_frames = 8
    config.data.eval_clips, config.data.eval_crops = 2, 1
    config.eval_batch_size = 4
    config.init_from = ''
  return config
