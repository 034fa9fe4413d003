"""Top classes of images with pretrained weights.

    python -m stvit_jax.tools.predict --model stvit_r_swin_small --image photo.jpg [--top 5]
    python -m stvit_jax.tools.predict --model deit_small --image a.jpg b.png photos/
    python -m stvit_jax.tools.predict --model swin_tiny --image cat.jpg --init_from hf://owner/repo/file
    python -m stvit_jax.tools.predict --model video_swin_tiny --image clip.mp4 --init_from DIR \
        --classes kinetics400_names.txt --clips 4 --crops 3

`--image` takes files and folders (their images, sorted). `--init_from` is what
`--config.init_from` accepts: `pretrained` (default: the model's catalogue entry,
downloaded and converted once into the cache; `python -m stvit_jax.tools.pretrained` lists
them), hf://owner/repo/file, https://..., or a converted directory. Images get the
evaluation preprocessing of the input pipeline (shorter side to size / crop_pct,
centre crop, ImageNet normalisation). ImageNet classes are named by their WordNet id
(tensorflow-datasets' imagenet2012 labels.txt), with words when timm's synset file is
installed; `--classes FILE` (one name per line) names other class sets.

Video models (video_swin_*) take clip files: decoded with PyAV, then the video
pipeline's evaluation views (data/video.py: `--clips` evenly spaced clips of the
model's frame count x `--crops` crops), the softmax averaged over the views.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys

import numpy as np

from stvit_jax import cli, models
from stvit_jax.data import files as files_lib
from stvit_jax.runtime import compile_cache
from stvit_jax.train import run_weights
from stvit_jax.weights import factory, hub

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
VIDEO_EXTS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v')


class UsageError(ValueError):
  """A bad argument; the message names it."""


def image_files(paths, exts=IMAGE_EXTS):
  """Files and folders (their images or clips, sorted) -> files, in order."""
  found = []
  for path in paths:
    if os.path.isdir(path):
      inside = sorted(os.path.join(path, f) for f in os.listdir(path)
                      if f.lower().endswith(exts))
      if not inside:
        raise UsageError(f'--image {path}: the folder holds no images or clips '
                         f'({", ".join(exts)})')
      found += inside
    elif os.path.isfile(path):
      found.append(path)
    else:
      raise UsageError(f'--image {path}: no such file or folder')
  return found


def class_names(num_classes, path=None):
  """ImageNet-1k: 'n01440764' ids from tensorflow-datasets, with the words from timm's
  synset file when timm is installed; `path`: one name per line; otherwise 'class i'."""
  if path:
    with open(path) as f:
      names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
      raise UsageError(f'--classes {path}: {len(names)} names for a model of {num_classes} '
                       'classes')
    return names
  if num_classes != 1000:
    return [f'class {i}' for i in range(num_classes)]
  tfds_dir = importlib.util.find_spec('tensorflow_datasets').submodule_search_locations[0]
  with open(os.path.join(tfds_dir, 'datasets', 'imagenet2012', 'labels.txt')) as f:
    wnids = f.read().split()
  words = {}
  timm = importlib.util.find_spec('timm')
  if timm is not None:  # read as a file: importing timm would import torch
    path = os.path.join(timm.submodule_search_locations[0], 'data', '_info',
                        'imagenet_synset_to_lemma.txt')
    if os.path.exists(path):
      with open(path) as f:
        words = dict(line.rstrip('\n').split('\t', 1) for line in f if '\t' in line)
  return [f'{w} {words.get(w, "")}'.strip() for w in wnids]


def preprocess(path, image_size):
  """float32 (S, S, 3): the eval pipeline's view of one image file (stvit_jax.data.files)."""
  cfg = files_lib.image_config(image_size)
  return files_lib.normalise(files_lib.read_image(path, cfg), cfg)


def preprocess_clip(path, model, clips, crops):
  """float32 (clips * crops, T, S, S, 3): the video pipeline's eval views of a clip file."""
  return files_lib.read_clip(path, files_lib.video_config(model.img_size, model.num_frames,
                                                          clips, crops))


def predict(model, files, top=5, batch_size=8, clips=4, crops=3, failures=None):
  """[(file, [(probability, class index), ...top]), ...] for `files` (images, or clips
  for a video model: the probabilities averaged over clips x crops views).

  A file that cannot be read raises files_lib.FileError; with a list `failures`, it is
  appended there as (file, message) instead, and the other files are still predicted.
  """
  import jax
  from flax import nnx
  from stvit_jax.runtime import xla_cpu

  graphdef, state = nnx.split(model)

  @functools.partial(jax.jit, compiler_options=xla_cpu.compiler_options(xla_cpu.INFERENCE))
  def probabilities(state, images):
    logits = nnx.merge(graphdef, state)(images, train=False)[0]
    return jax.nn.softmax(logits.astype('float32'), axis=-1)

  def readable(paths, read):
    """(path, array) of the files `read` can read; the others go to `failures`."""
    for f in paths:
      try:
        yield f, read(f)
      except files_lib.FileError as e:
        if failures is None:
          raise
        failures.append((f, str(e)))

  results = []
  if models.registry.input_kind(model) == 'video':  # the family record says
    for f, views in readable(files, lambda f: preprocess_clip(f, model, clips, crops)):
      p = np.asarray(probabilities(state, views)).mean(0)
      best = np.argsort(-p)[:top]
      results.append((f, [(float(p[i]), int(i)) for i in best]))
    return results
  read = list(readable(files, lambda f: preprocess(f, model.img_size)))
  for start in range(0, len(read), batch_size):
    chunk = [f for f, _ in read[start:start + batch_size]]
    images = np.stack([x for _, x in read[start:start + batch_size]])
    if len(chunk) < batch_size and len(read) > batch_size:  # one compiled shape
      images = np.concatenate([images, np.zeros((batch_size - len(chunk),) + images.shape[1:],
                                                images.dtype)])
    probs = np.asarray(probabilities(state, images))[:len(chunk)]
    for f, p in zip(chunk, probs):
      best = np.argsort(-p)[:top]
      results.append((f, [(float(p[i]), int(i)) for i in best]))
  return results


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m stvit_jax.tools.predict', description=__doc__)
  parser.add_argument('--model', help='registry name, e.g. stvit_r_swin_small (optional with '
                      'a run directory as --init_from: the run names it)')
  parser.add_argument('--image', required=True, nargs='+', metavar='PATH',
                      help='image files and/or folders of images')
  parser.add_argument('--top', type=int, default=5, help='classes shown per image (default 5)')
  parser.add_argument('--init_from', default='pretrained', help="weights: 'pretrained' (the "
                      'catalogue entry), hf://owner/repo/file, https://..., a converted '
                      "directory or a training run's workdir (its newest readable checkpoint, "
                      'EMA weights when the run evaluated them)')
  parser.add_argument('--raw_weights', action='store_true', help='with a run directory: its '
                      'trained parameters, not their EMA')
  parser.add_argument('--set', dest='overrides', action='append', default=[],
                      metavar='KEY=VALUE', type=cli.key_value,
                      help='model constructor arguments (e.g. a converted tiny width)')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--classes', metavar='FILE', help='class names, one per line '
                      '(default: ImageNet WordNet ids for 1000 classes, else class i)')
  parser.add_argument('--clips', type=int, default=4, help='video models: clips per file')
  parser.add_argument('--crops', type=int, default=3, help='video models: crops per clip')
  compile_cache.add_flag(parser)
  args = parser.parse_args(argv)
  compile_cache.enable(args.compilation_cache_dir)
  run = run_weights.is_run(args.init_from)
  if run:  # the run names its model; --model / --set are checked against it below
    args.model = args.model or run_weights.model_of(run_weights.read_config(args.init_from))[0]
  elif args.model is None:
    parser.error("--model is required unless --init_from is a training run's directory")
  elif args.raw_weights:
    parser.error("--raw_weights: only for a training run's directory as --init_from")
  if args.model not in models.names():
    parser.error(f'--model {args.model!r} is not valid; choose one of {", ".join(models.names())}')
  for flag in ('top', 'batch_size', 'clips', 'crops'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag} {getattr(args, flag)} must be >= 1')
  if args.classes and not os.path.isfile(args.classes):
    parser.error(f'--classes {args.classes}: no such file')
  video = models.options(args.model).get('num_frames') is not None
  try:
    files = image_files(args.image, VIDEO_EXTS if video else IMAGE_EXTS)  # before downloads
    if not hub.is_address(args.init_from) and not os.path.isdir(args.init_from):
      raise UsageError(f"--init_from {args.init_from!r}: not 'pretrained', hf://..., "
                       "https://..., an existing converted directory or a run's workdir")
    if run:
      model, _ = run_weights.create(args.init_from, name=args.model,
                                    overrides=dict(args.overrides), raw=args.raw_weights)
    else:
      model = factory.create(args.model, pretrained=args.init_from, **dict(args.overrides))
    names = class_names(model.head.out_features, args.classes)
    failures = []  # an unreadable file is reported and skipped: the others are predicted
    for path, best in predict(model, files, min(args.top, len(names)), args.batch_size,
                              args.clips, args.crops, failures=failures):
      print(path)
      for p, i in best:
        print(f'  {100 * p:6.2f}%  {names[i]}')
  except (ValueError, cli.UserError) as e:  # UsageError, PretrainedError, RunMismatch,
    cli.error_line(f'error: {e}')          # CheckpointError, an option that does not exist
    return 2
  sys.stdout.flush()  # the predictions first, then what could not be read
  for _, message in failures:
    cli.error_line(f'error: {message}')
  if failures:
    cli.error_line(f'error: {len(failures)} of {len(files)} files could not be read '
                   f'(listed above); {len(files) - len(failures)} predicted')
    return cli.USAGE
  return 0


if __name__ == '__main__':
  cli.run(main)
