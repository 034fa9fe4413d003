"""Data and Mixup/CutMix defaults: the paper's recipe (docs/models.md section 7, DeiT/timm).

Trainer configs call these and override fields, e.g.
`config.data = defaults.data_config()`; `config.data.data_dir = 'gs://bucket/tfds'`.
"""
import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Datasets whose examples are videos (data/builders/kinetics.py, data/builders/moving_digits.py).
VIDEO_DATASETS = ('kinetics400', 'kinetics600', 'kinetics700', 'stvit_moving_digits')


def data_config(name='imagenet2012'):
  """Input pipeline fields. `name='stvit_digits'` gives the CPU quickstart preset."""
  c = ml_collections.ConfigDict()
  c.name = 'imagenet2012'       # any TFDS image/label dataset; 'stvit_digits' ships with the package
  c.data_dir = None             # None: TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR); may be gs://
  c.train_split = 'train'
  c.eval_split = 'validation'
  c.image_size = 224
  # train: timm RandomResizedCrop (inception crop) + horizontal flip
  c.crop_scale = (0.08, 1.0)
  c.crop_ratio = (3 / 4, 4 / 3)
  c.hflip = 0.5
  # eval: resize the shorter side to floor(image_size / crop_pct), centre crop image_size
  c.crop_pct = 0.875
  c.interpolation = 'bicubic'   # bicubic | bilinear | nearest | area (resizes; RandAugment warps: bilinear)
  c.randaugment = 'rand-m9-mstd0.5-inc1'  # timm policy string; '' disables
  # timm semantics: colour jitter is skipped while RandAugment is on, unless forced.
  c.color_jitter = 0.4
  c.force_color_jitter = False
  c.reprob = 0.25               # random erasing probability (timm mode 'pixel', one box)
  c.mean = IMAGENET_MEAN
  c.std = IMAGENET_STD
  # 'device': batches leave the host as uint8 and the jitted steps normalise and erase
  # (data/device_augment.py); 'host': tf.data does both and ships float32 (4x the bytes).
  c.normalize_on = 'device'
  c.shuffle_buffer = 10_000     # undecoded records per process
  c.cache = False               # keep this process's undecoded train records in memory
  # 'process': each process reads its own even share (pods, big datasets); 'global':
  # all read the whole shuffled split and keep their rows of each global batch, so the
  # batches do not depend on the process count (small datasets, tests).
  c.shard_by = 'process'
  c.prefetch = 2                # batches ready ahead of the step; 0: autotuned
  # tf.data threading (0: tf.data's default). Order is always deterministic (exact resume).
  c.threadpool_size = 0         # private threads for this pipeline; 0: the shared pool (one per core)
  c.intra_op_threads = 1        # threads one op may use: 1, as images already run in parallel
  c.autotune_cpu_budget = 0     # cores the autotuner may plan for; 0: all
  # tf.data service dispatcher ('grpc://host:port') whose CPU workers build the train
  # batches (data/service.py, launch/README.md); None: this host does. Same batches either way.
  c.service_address = ml_collections.config_dict.placeholder(str)
  if name == 'imagenet2012':
    return c
  if name != 'stvit_digits':
    raise ValueError(f"data_config(name={name!r}): presets exist for 'imagenet2012' and "
                     "'stvit_digits'; for another TFDS dataset start from 'imagenet2012' "
                     'and set .name')
  # 1,797 8x8 digits stored at 32x32: mild crops, no flips, light regularisation.
  c.name = 'stvit_digits'
  c.eval_split = 'test'
  c.image_size = 32
  c.crop_scale = (0.6, 1.0)
  c.hflip = 0.0
  c.crop_pct = 1.0
  c.interpolation = 'bilinear'
  c.randaugment = ''
  c.color_jitter = 0.0
  c.reprob = 0.0
  c.shuffle_buffer = 2048
  c.cache = True
  c.shard_by = 'global'
  return c


def video_data_config(name='kinetics400'):
  """Video pipeline fields (data/video.py): docs/video.md section 1's sampling and views."""
  if name not in VIDEO_DATASETS:
    raise ValueError(f'video_data_config(name={name!r}): video datasets are {VIDEO_DATASETS}')
  c = ml_collections.ConfigDict()
  c.name = name
  c.data_dir = None             # None: TFDS default; may be gs://
  c.train_split = 'train'
  c.eval_split = 'validation'
  c.image_size = 224            # crop side (train and eval)
  c.num_frames = 32             # frames per clip
  c.frame_stride = 2            # on the native frame rate; short videos loop
  # train: one RandomResizedCrop box and one flip for every frame of a clip
  c.crop_scale = (0.08, 1.0)
  c.crop_ratio = (3 / 4, 4 / 3)
  c.hflip = 0.5
  c.interpolation = 'bilinear'
  # eval: views = eval_clips evenly spaced clips x eval_crops crops along the long side
  # of frames resized to short side image_size; softmax averaged over the views
  c.eval_clips = 4
  c.eval_crops = 3
  c.single_frame = False        # every clip = one sampled frame repeated (a baseline)
  c.mean = IMAGENET_MEAN
  c.std = IMAGENET_STD
  c.shuffle_buffer = 256        # undecoded videos (~6 MB each for Kinetics) per process
  c.cache = False
  c.shard_by = 'process'
  c.prefetch = 2
  if name != 'stvit_moving_digits':
    return c
  # 32x32 clips of digits moving across a canvas: motion classes, small crops would
  # cut the digit out; flips would swap left and right.
  c.image_size = 32
  c.num_frames = 8
  c.crop_scale = (0.7, 1.0)
  c.crop_ratio = (0.9, 1 / 0.9)
  c.hflip = 0.0
  c.eval_clips = 2
  c.eval_crops = 1
  c.mean = (0.5, 0.5, 0.5)
  c.std = (0.5, 0.5, 0.5)
  c.shuffle_buffer = 2048
  c.cache = True
  c.shard_by = 'global'
  return c


def mixup_config():
  """timm Mixup(mode='batch') fields; alpha 0 disables that branch, prob 0 disables both."""
  c = ml_collections.ConfigDict()
  c.mixup_alpha = 0.8
  c.cutmix_alpha = 1.0
  c.prob = 1.0                  # chance that a batch is mixed at all
  c.switch_prob = 0.5           # chance of CutMix instead of Mixup when both are on
  c.label_smoothing = 0.1
  return c
