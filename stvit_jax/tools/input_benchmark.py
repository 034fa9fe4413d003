"""Input pipeline benchmark: the real train and eval pipelines on ImageNet-like JPEGs.

    python -m stvit_jax.tools.benchmark --input --config=configs/deit_s.py [--topology=v5e:4x4]
    python -m stvit_jax.tools.input_benchmark --config=configs/deit_s.py      # the same
    python -m stvit_jax.tools.benchmark --input --profile ...   # + per-op CPU cost (input_profile.py)

Generates an ImageNet-like `imagenet2012` (stvit_jax/data/builders/imagenet_like.py:
ImageNet's image sizes, file sizes and JPEG qualities) once in --data_dir,
then times `pipeline.train_iterator` (the config's recipe, and the recipe
without RandAugment / random erasing) and `pipeline.eval_iterator` in
alternating rounds. Each round builds a fresh iterator, discards its first
batches (pipeline start-up, shuffle-buffer fill) and times the next ones.

Two rates per row:
  img/s        wall clock: what this machine delivered while it ran (shared
               machines: other jobs take cores, so this is noisy);
  img/CPU-s    images per CPU-second this process used (all its threads): the
               per-core rate, robust to other load on the machine.
  img/s/core   img/s divided by the cores the process could use.
With --topology, the rate a host of that TPU slice must deliver for the
config's model at --mfu of the chips' bfloat16 peak, from the training FLOPs
per image of the AOT compile (docs/tpu_compile_proofs.txt) or --flops_per_image.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np


# Training FLOPs per image (forward + backward + update, bfloat16, global batch 1024) from
# the AOT compiles in docs/tpu_compile_proofs.txt (XLA cost_analysis on v5e:4x4 / v4:2x2x4).
AOT_FLOPS_PER_IMAGE = {'stvit_deit_small': 11.6e9, 'deit_small': 28.1e9,
                       'stvit_r_swin_small': 35.9e9}
# bfloat16 peak per chip (Cloud TPU datasheets) and the host VM that serves 4 chips in a
# multi-host slice (v4: ct4p-hightpu-4t, v5e: ct5lp-hightpu-4t, v5p: ct5p-hightpu-4t,
# v6e: ct6e-standard-4t). A single-host v5e-8 (ct5lp-hightpu-8t) has 8 chips, 224 vCPUs.
CHIP_PEAK_TFLOPS = {'v4': 275, 'v5e': 197, 'v5p': 459, 'v6e': 918}
HOST = {'v4': (4, 240), 'v5e': (4, 112), 'v5p': (4, 208), 'v6e': (4, 180)}  # chips, vCPUs
SINGLE_HOST = {'v5e': (8, 224), 'v6e': (8, 180)}  # slices of 8 chips: one VM


def host_requirement(topology, flops_per_image, mfu):
  """{chips, hosts, chips_per_host, vcpus, img_s_chip, img_s_host, img_s_vcpu} for a slice."""
  from stvit_jax.tools import aot  # pylint: disable=g-import-not-at-top
  top = aot.parse_topology(topology)
  generation = topology.split(':')[0]
  chips_per_host, vcpus = HOST[generation]
  if top.num_chips == 8 and generation in SINGLE_HOST:
    chips_per_host, vcpus = SINGLE_HOST[generation]
  chips_per_host = min(chips_per_host, top.num_chips)
  per_chip = mfu * CHIP_PEAK_TFLOPS[generation] * 1e12 / flops_per_image
  per_host = per_chip * chips_per_host
  return dict(topology=top.name, accelerator=top.accelerator_type, chips=top.num_chips,
              hosts=max(1, top.num_chips // chips_per_host), chips_per_host=chips_per_host,
              vcpus=vcpus, img_s_chip=per_chip, img_s_host=per_host, img_s_vcpu=per_host / vcpus)


def format_requirement(req, *, model, flops_per_image, source, mfu, measured):
  lines = [f'# {req["topology"]} = {req["accelerator"]}: {req["chips"]} chips, {req["hosts"]} '
           f'host(s) of {req["chips_per_host"]} chips and {req["vcpus"]} vCPUs',
           f'# {model}: {flops_per_image / 1e9:.1f} GFLOP per trained image ({source}); at '
           f'{mfu:.0%} MFU of {CHIP_PEAK_TFLOPS[req["topology"].split(":")[0]]} TFLOP/s bf16:',
           f'needed   {req["img_s_chip"]:9.0f} img/s per chip  {req["img_s_host"]:9.0f} per host  '
           f'{req["img_s_vcpu"]:6.0f} per vCPU']
  for name, rate in measured:
    cores = req['img_s_host'] / rate
    lines.append(f'{name}: {rate:.0f} img/CPU-s here -> {cores:.0f} of the host\'s '
                 f'{req["vcpus"]} vCPUs ({cores / req["vcpus"]:.0%})')
  return '\n'.join(lines)


def _cores():
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _cache(data_dir, num_jpegs, seed):
  return os.path.join(data_dir, f'imagenet_like-{num_jpegs}-{seed}.npz')  # generating is slow


def load_jpegs(data_dir, num_jpegs, seed=0):
  """The generated JPEGs (bytes) cached in data_dir, or None."""
  if not os.path.exists(_cache(data_dir, num_jpegs, seed)):
    return None
  with np.load(_cache(data_dir, num_jpegs, seed)) as f:
    data, ends = f['data'], f['ends']
  return [data[a:b].tobytes() for a, b in zip(np.r_[0, ends[:-1]], ends)]


def prepare(data_dir, *, num_jpegs, num_train, num_eval, seed=0, log=print):
  """An ImageNet-like imagenet2012 in data_dir, generated once (a stamp names the sizes)."""
  from stvit_jax.data.builders import imagenet_like  # pylint: disable=g-import-not-at-top
  stamp = os.path.join(data_dir, f'imagenet_like-{num_jpegs}-{num_train}-{num_eval}-{seed}')
  if os.path.exists(stamp):
    with open(stamp) as f:
      log(f.read().strip() + f'  (reused {data_dir})')
    return data_dir
  start = time.perf_counter()
  jpegs = load_jpegs(data_dir, num_jpegs, seed)
  if jpegs is None:
    jpegs = imagenet_like.make_jpegs(num_jpegs, seed)
    os.makedirs(data_dir, exist_ok=True)
    np.savez(_cache(data_dir, num_jpegs, seed), data=np.frombuffer(b''.join(jpegs), np.uint8),
             ends=np.cumsum([len(j) for j in jpegs]))
  imagenet_like.write_imagenet2012(data_dir, jpegs, num_train=num_train, num_eval=num_eval)
  text = imagenet_like.describe(jpegs)
  with open(stamp, 'w') as f:
    f.write(text + '\n')
  log(f'{text}; generated in {time.perf_counter() - start:.0f}s')
  return data_dir


def time_iterator(make, *, warmup, batches, batch_size):
  """(wall s, process CPU s) for `batches` batches after `warmup` from a fresh `make()`."""
  it = make()
  for _ in range(warmup):
    next(it)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(it)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  del it
  return batches * batch_size / wall, batches * batch_size / cpu


def variants(data_cfg):
  """[(name, data config)]: the config's recipe and the recipe without costly parts."""
  out = [('train: ' + describe_recipe(data_cfg), data_cfg)]
  if data_cfg.randaugment:
    c = data_cfg.copy_and_resolve_references()
    c.randaugment = ''
    out.append(('train: without RandAugment', c))
    if c.reprob > 0:
      c = c.copy_and_resolve_references()
      c.reprob = 0.0
      out.append(('train: without RandAugment and erasing', c))
  return out


def describe_recipe(c):
  parts = [f'RandAugment {c.randaugment}' if c.randaugment else None,
           f'erasing {c.reprob}' if c.reprob else None]
  return 'recipe (' + ', '.join(p for p in parts if p) + ')' if any(parts) else 'recipe'


def run(data_cfg, *, batch_size, rounds, warmup, batches, log=print):
  """Rows {name, img_s (median), img_cpu_s (median), rounds} for every variant and eval."""
  from stvit_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  cases = []
  for name, cfg in variants(data_cfg):
    steps = pipeline.steps_per_epoch(cfg, global_batch_size=batch_size)
    if steps < warmup + batches:
      raise ValueError(f'{cfg.train_split} gives {steps} steps per epoch; '
                       f'--warmup + --batches needs {warmup + batches}')

    def make(r, cfg=cfg, steps=steps):  # round r reads epoch r: fresh order and augmentation
      return lambda: pipeline.train_iterator(cfg, global_batch_size=batch_size, seed=0,
                                             start_step=r * steps, process_index=0,
                                             process_count=1)
    cases.append((name, make))
  cases.append(('eval', lambda r: lambda: pipeline.eval_iterator(
      data_cfg, global_batch_size=batch_size, process_index=0, process_count=1)))
  results = {name: [] for name, _ in cases}
  for r in range(rounds):
    for name, make in (cases if r % 2 == 0 else cases[::-1]):
      results[name].append(time_iterator(make(r), warmup=warmup, batches=batches,
                                         batch_size=batch_size))
    log(f'round {r + 1}/{rounds}: ' + ', '.join(
        f'{n} {v[-1][0]:.0f}/s {v[-1][1]:.0f}/CPU-s' for n, v in results.items()))
  return [dict(name=name, img_s=statistics.median(w for w, _ in v),
               img_cpu_s=statistics.median(c for _, c in v), rounds=v)
          for name, v in results.items()]


def format_rows(rows, cores):
  lines = [f'{"pipeline":<58} {"img/s":>8} {"img/s/core":>10} {"img/CPU-s":>10}']
  for row in rows:
    lines.append(f'{row["name"]:<58} {row["img_s"]:8.0f} {row["img_s"] / cores:10.0f} '
                 f'{row["img_cpu_s"]:10.0f}')
  return '\n'.join(lines)


def load_config(spec):
  """'configs/deit_s.py:baseline' -> the ConfigDict its get_config returns (a path not
  found here is looked up among the bundled configs)."""
  from stvit_jax import cli, configs  # pylint: disable=g-import-not-at-top
  return cli.load_config(spec, configs.DIRECTORY)


def main(argv=None):
  from stvit_jax import cli  # pylint: disable=g-import-not-at-top
  parser = cli.ArgumentParser(prog='python -m stvit_jax.tools.input_benchmark', description=__doc__)
  parser.add_argument('--config', default='configs/deit_s.py',
                      help='config file[:variants]; its data recipe is timed')
  parser.add_argument('--data_dir', default='/tmp/stvit_imagenet_like',
                      help='where the ImageNet-like set is generated (reused when present)')
  parser.add_argument('--batch', type=int, default=128, help='per-process batch size')
  parser.add_argument('--jpegs', type=int, default=512, help='distinct generated JPEGs')
  parser.add_argument('--num_train', type=int, default=2048)
  parser.add_argument('--num_eval', type=int, default=1536)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=2, help='untimed batches per round')
  parser.add_argument('--batches', type=int, default=8, help='timed batches per round')
  parser.add_argument('--profile', action='store_true',
                      help='also print the per-op CPU cost of the transforms')
  parser.add_argument('--topology', action='append', default=[],
                      help="TPU slice(s) as in stvit_jax.tools.aot, e.g. v5e:4x4, v4:2x2x4: the rate "
                           'a host needs for the config model (repeatable)')
  parser.add_argument('--mfu', type=float, default=0.4, help='model FLOPs utilisation assumed')
  parser.add_argument('--flops_per_image', type=float, default=None,
                      help='training FLOPs per image (default: the AOT figure of the model)')
  parser.add_argument('--skip_timing', action='store_true',
                      help='print only the --topology requirements')
  args = parser.parse_args(argv)
  config = load_config(args.config)
  model = config.model.name
  flops, source = args.flops_per_image, '--flops_per_image'
  if args.topology and flops is None:
    if model not in AOT_FLOPS_PER_IMAGE:
      parser.error(f'no AOT FLOPs figure for {model!r} (known: {sorted(AOT_FLOPS_PER_IMAGE)}); '
                   'run `python -m stvit_jax.tools.aot` for it and pass --flops_per_image')
    flops, source = AOT_FLOPS_PER_IMAGE[model], 'AOT compile, docs/tpu_compile_proofs.txt'
  try:
    for t in args.topology:
      host_requirement(t, flops, args.mfu)
  except (ValueError, KeyError) as e:
    parser.error(str(e))
  if not 0 < args.mfu <= 1:
    parser.error('--mfu must be in (0, 1]')
  if args.skip_timing:
    for t in args.topology:
      print(format_requirement(host_requirement(t, flops, args.mfu), model=model,
                               flops_per_image=flops, source=source, mfu=args.mfu, measured=[]))
    return 0
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  cfg = config.data
  cfg.name, cfg.data_dir = 'imagenet2012', prepare(
      args.data_dir, num_jpegs=args.jpegs, num_train=args.num_train, num_eval=args.num_eval,
      log=log)
  cfg.train_split, cfg.eval_split = 'train', 'validation'
  rows = run(cfg, batch_size=args.batch, rounds=args.rounds, warmup=args.warmup,
             batches=args.batches, log=log)
  cores = _cores()
  print(f'# {args.config}: batch {args.batch}, {cfg.image_size}px, {args.rounds} alternating '
        f'rounds of {args.batches} batches (medians); {cores} cores usable')
  print(format_rows(rows, cores))
  measured = [(rows[0]['name'], rows[0]['img_cpu_s'])]
  for t in args.topology:
    print(format_requirement(host_requirement(t, flops, args.mfu), model=model,
                             flops_per_image=flops, source=source, mfu=args.mfu,
                             measured=measured))
  if args.profile:
    from stvit_jax.tools import input_profile  # pylint: disable=g-import-not-at-top
    print('# per-op CPU cost (process CPU time per image, one map thread; medians)')
    print(input_profile.format_profile(input_profile.profile(cfg, load_jpegs(
        args.data_dir, args.jpegs)[:256], batch=args.batch)))
  return 0


if __name__ == '__main__':
  from stvit_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
