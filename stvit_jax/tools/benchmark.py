"""Side-by-side speed table of several models, measured in one run.

    python -m stvit_jax.tools.benchmark --models deit_small,stvit_deit_small,swin_small,stvit_r_swin_small \
        --batch 1,64 [--dtype bfloat16] [--train [--recipe ema_decay=0.9999]] [--json rows.json]

--train times the trainer's own step (`trainer.build`, as `train_and_evaluate` runs
it): the paper's recipe of `stvit_jax/train/defaults.py` (Mixup / CutMix, label smoothing,
gradient clipping, AdamW; `--recipe` changes any training config field, e.g.
`optim.grad_accum_steps=2`), on random batches of the data side's batch spec.

Each (model, batch) is compiled once ahead of time (the compile time is
reported), warmed up, then timed with `block_until_ready` in `--rounds`
rounds. Every round visits all cases, in alternating order, together with a
large matmul of the same dtype, so that machine drift (other jobs, clock
changes) hits every model and the peak alike. Rows per case:

  img/s      median over rounds; `spread` is (max - min) / median over rounds
  img/CPU-s  images per CPU-second of this process (robust to other jobs' load)
  ms/batch   median time of one call (the latency at batch 1)
  speed-up   img/s against the first model at the same batch: the median over
             rounds of the per-round ratio (each round times both close together)
  vs dense   the same, against the model's dense counterpart when it is in the run
             (stvit_deit_small -> deit_small, stvit_r_swin_small -> swin_small)
  GMACs      per image, forward, paper (fvcore) convention: matmuls and convs only
  GFLOP/s    achieved: 2 * MACs * img/s (x3 with --train: forward + backward)
  %peak      of the matmul measured in the same run (an attainable peak, not the datasheet)
  compile s  lowering + XLA compilation of the step
  mem MiB    the compiled step's footprint as XLA reports it (arguments + outputs +
             temporaries - donated); the device's own peak is printed below the
             table where the backend reports one (GPU, TPU)

Works on whatever `jax.devices()[0]` is (CPU, GPU, TPU); one device. Before
JAX starts, the process keeps freed memory (`stvit_jax.runtime.cpu_allocator`): on CPU,
XLA's per-call buffers are otherwise page-faulted anew on every call.
`--set attention=fused` times `jax.nn.dot_product_attention` instead of the
explicit attention (models.execution).

`--ops` prints, instead of the timing table, where each case spends its time: XLA op
time by kind from a jax.profiler trace (stvit_jax/tools/op_profile.py).

`--input` times the input pipeline instead (stvit_jax/tools/input_benchmark.py):
    python -m stvit_jax.tools.benchmark --input --config=configs/deit_s.py [--topology=v5e:4x4]
"""
from __future__ import annotations

import sys

if __name__ == '__main__' and '--input' not in sys.argv:  # model timing only (tf.data threads
  from stvit_jax.runtime import cpu_allocator  # allocate concurrently); before JAX starts its threads
  cpu_allocator.keep_freed_memory()

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stvit_jax.tools import benchmark_table, flops
from stvit_jax import cli
from stvit_jax.runtime import cpu_allocator, sharding, xla_cpu

DTYPES = ('float32', 'bfloat16')


@dataclass
class Case:
  """One timed thing: `step()` runs a call and returns what to block on."""
  name: str
  batch: int
  step: Callable[[], object]
  flops_per_call: float      # 2 * MACs (x3 for training) per call
  macs_per_image: float = 0.0
  compile_s: float = 0.0
  memory_bytes: int | None = None
  recipe: str = ''           # what the train step does (train cases)
  compiled: object = None    # the compiled executable (`--ops` reads its HLO)
  seconds: list = field(default_factory=list)  # one entry per round: seconds per call
  cpu_seconds: list = field(default_factory=list)  # process CPU seconds per call, per round

  def run(self, calls):
    start, cpu = time.perf_counter(), time.process_time()
    out = None
    for _ in range(calls):
      out = self.step()
    jax.block_until_ready(out)
    self.last_cpu = (time.process_time() - cpu) / calls
    return (time.perf_counter() - start) / calls


def _memory(compiled):
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement it
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _compile(fn, *args, donate=(), cpu_library=xla_cpu.INFERENCE):
  start = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile(
      xla_cpu.compiler_options(cpu_library))
  return compiled, time.perf_counter() - start


def model_case(name, batch, *, dtype='float32', train=False, image_size=224,
               num_classes=1000, seed=0, num_frames=32, recipe=None,
               cpu_library=None, **overrides):
  """Builds, compiles and returns a `Case` for `models.create(name)` at `batch`
  (images, or clips of `num_frames` frames for video models: then img/s is clips/s).

  train=True times the trainer's own step (`trainer.build`): the paper's recipe
  (`stvit_jax/train/defaults.py`: Mixup / CutMix, label smoothing, gradient clipping, AdamW)
  with `recipe` ({'optim.grad_accum_steps': 2, 'ema_decay': 0.999, ...}) applied.
  On CPU, dots and convolutions go to `cpu_library` (stvit_jax/runtime/xla_cpu.py; None: the
  trainer's choice for its step, xla_cpu.INFERENCE for a forward).
  """
  from stvit_jax import models  # the registry imports every family: only when needed
  if train:
    return _train_case(name, batch, dtype=dtype, image_size=image_size,
                       num_classes=num_classes, seed=seed, recipe=recipe or {},
                       cpu_library=cpu_library, **overrides)
  model = models.create(name, dtype=dtype, seed=seed, num_classes=num_classes,
                        img_size=image_size, **overrides)
  macs = flops.model_macs(model, image_size, num_frames=num_frames)
  rng = np.random.default_rng(seed)
  spec = models.example_input(name, batch, image_size, frames=num_frames)
  images = jnp.asarray(rng.standard_normal(spec.shape, np.float32))
  graphdef, state = nnx.split(model)

  def forward(state, images):
    logits, _ = nnx.merge(graphdef, state)(images, train=False)
    return logits

  compiled, seconds = _compile(forward, state, images,
                               cpu_library=cpu_library or xla_cpu.INFERENCE)
  step = lambda: compiled(state, images)  # noqa: E731
  return Case(f'{name}', batch, step, 2 * macs * batch, macs, seconds, _memory(compiled),
              compiled=compiled)


def train_config(name, batch, *, dtype, image_size, num_classes, seed, recipe, **overrides):
  """The paper's ImageNet recipe for model `name` at global batch `batch`, with `recipe`
  ({'a.b': value}) applied: what `benchmark --train` times."""
  from stvit_jax.train import defaults  # pylint: disable=g-import-not-at-top
  config = defaults.base(name, dataset='imagenet2012', num_classes=num_classes,
                       img_size=image_size, **overrides)
  config.seed, config.batch_size, config.model.dtype = seed, batch, dtype
  config.total_steps, config.warmup_steps = 1000, 0
  for key, value in recipe.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ValueError(f'--recipe {key}: the training config has no {key!r}; valid: '
                       f'{", ".join(sorted(node.keys()))}')
    node[leaf] = type(node[leaf])(value) if node[leaf] is not None else value
  return config


def _train_case(name, batch, *, seed, recipe, cpu_library, **options):
  """The trainer's jitted train step (`trainer.build`) on one device, state donated."""
  from stvit_jax.train import functional
  from stvit_jax.train import trainer  # pylint: disable=g-import-not-at-top
  from stvit_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = train_config(name, batch, seed=seed, recipe=recipe, **options)
  mesh = sharding.make_mesh(config, devices=jax.devices()[:1])  # one device, as every case
  trainer.check_config(config, pipeline.DatasetInfo(config.model.num_classes, 0, 0), mesh)
  trainer = trainer.build(config, mesh, pipeline.batch_spec(config.data, batch),
                        steps_per_epoch=1000, cpu_library=cpu_library)
  rng = np.random.default_rng(seed)
  batch_data = {}
  for key, spec in trainer.batch_spec.items():
    if key == 'label':
      batch_data[key] = rng.integers(0, config.model.num_classes, spec.shape).astype(spec.dtype)
    else:
      batch_data[key] = rng.standard_normal(spec.shape).astype(spec.dtype)
  batch_data = jax.device_put(batch_data, trainer.batch_spec['label'].sharding)
  start = time.perf_counter()
  compiled = trainer.lower().compile()
  seconds = time.perf_counter() - start
  carry = [(trainer.initial_state(), None)]

  def step():
    carry[0] = compiled(carry[0][0], batch_data)
    return carry[0]

  model = nnx.eval_shape(lambda: functional.create_model(config))
  macs = flops.model_macs(model, config.model.img_size)
  # forward 2 * MACs, backward twice the forward
  return Case(name, batch, step, 6 * macs * batch, macs, seconds, _memory(compiled),
              recipe=describe_recipe(config), compiled=compiled)


def describe_recipe(config):
  mix = config.mixup
  return (f'mixup {mix.mixup_alpha}/cutmix {mix.cutmix_alpha} p={mix.prob}, '
          f'smoothing {mix.label_smoothing}, clip {config.optim.grad_clip_norm}, '
          f'accum {config.optim.grad_accum_steps}, EMA {config.ema_decay or "off"}, '
          f'drop_path {config.model.get("drop_path_rate", 0)}')


def matmul_case(dtype='float32', n=None, cpu_library=xla_cpu.INFERENCE):
  """An n x n x n matmul in `dtype`: the attainable matmul peak of the device."""
  if n is None:  # big enough to saturate the device, small enough to time quickly
    n = 2048 if jax.default_backend() == 'cpu' else 8192
  keys = jax.random.split(jax.random.key(0), 2)
  a, b = (jax.random.normal(k, (n, n), jnp.dtype(dtype)) for k in keys)
  compiled, seconds = _compile(jnp.matmul, a, b, cpu_library=cpu_library)
  cpu = jax.default_backend() == 'cpu' and not xla_cpu.user_sets_option()
  return Case(f'matmul {n}^3' + (f' ({cpu_library})' if cpu else ''), 1,
              lambda: compiled(a, b), 2.0 * n ** 3, 0.0, seconds, _memory(compiled))


def peak_cases(dtype='float32', n=None):
  """The matmul peak cases: on CPU one per XLA:CPU library (the peak is the faster of them,
  whichever library the models use), else one."""
  if jax.default_backend() != 'cpu' or xla_cpu.user_sets_option():
    return [matmul_case(dtype, n)]
  return [matmul_case(dtype, n, library) for library in xla_cpu.LIBRARIES]


def measure(cases, *, rounds=5, warmup=2, min_time=1.0, log=None):
  """Times every case `rounds` times, alternating the order each round.

  Each case gets as many calls per round as fill `min_time` seconds (at least one),
  chosen from its warm-up; `case.seconds` gets one seconds-per-call per round.
  """
  calls = {}
  for case in cases:
    t = min(case.run(1) for _ in range(max(1, warmup)))
    calls[case.name, case.batch] = max(1, math.ceil(min_time / t))
  for r in range(rounds):
    order = cases if r % 2 == 0 else cases[::-1]
    for case in order:
      case.seconds.append(case.run(calls[case.name, case.batch]))
      case.cpu_seconds.append(case.last_cpu)
    if log:
      log(f'round {r + 1}/{rounds}: ' + ', '.join(
          f'{c.name}@{c.batch} {c.batch / c.seconds[-1]:.1f}/s' for c in cases))


def dense_counterpart(name):
  """The registry's dense counterpart of model `name` ('stvit_deit_small' -> 'deit_small'),
  or None for a model that is not an STViT."""
  from stvit_jax import models
  return models.dense_counterpart(name)


def device_peak_memory():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def _ints(text):
  try:
    values = [int(v) for v in text.split(',') if v]
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f'expected positive integers, got {text!r}')
  return values


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  if '--input' in argv:
    from stvit_jax.tools import input_benchmark  # pylint: disable=g-import-not-at-top
    return input_benchmark.main([a for a in argv if a != '--input'])
  parser = cli.ArgumentParser(prog='python -m stvit_jax.tools.benchmark', description=__doc__)
  parser.add_argument('--models', default='deit_small,stvit_deit_small',
                      help='comma-separated registered names; the first is the baseline')
  parser.add_argument('--batch', type=_ints, default=[1, 64], help='comma-separated batch sizes')
  parser.add_argument('--dtype', choices=DTYPES, default='float32', help='compute dtype')
  parser.add_argument('--train', action='store_true',
                      help="time the trainer's own train step (trainer.build: the paper's recipe, "
                      'Mixup / CutMix, label smoothing, clipping, AdamW) instead of inference')
  parser.add_argument('--recipe', action='append', default=[], metavar='KEY=VALUE',
                      type=cli.key_value, help='with --train: a training config field, e.g. --recipe '
                      'optim.grad_accum_steps=2 --recipe ema_decay=0.9999')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--num_frames', type=int, default=32,
                      help='frames per clip for video models (img/s is then clips/s)')
  parser.add_argument('--rounds', type=int, default=5, help='timed rounds per case')
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls per case')
  parser.add_argument('--min_time', type=float, default=1.0,
                      help='seconds per case per round (at least one call)')
  parser.add_argument('--matmul', type=int, default=None,
                      help='side of the peak matmul (default 2048 on CPU, 8192 elsewhere)')
  parser.add_argument('--cpu_library', choices=tuple(xla_cpu.LIBRARIES), default=None,
                      help="on CPU: XLA's library for the models' dots and convolutions "
                      f'(stvit_jax/runtime/xla_cpu.py; default {xla_cpu.INFERENCE} for inference, '
                      f'{xla_cpu.TRAINING} with --train, as the trainer); the matmul peak is '
                      'the faster of both')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      type=cli.key_value, help='model option for every model, e.g. --set '
                      'embed_dim=64 (a Python literal, else a string)')
  parser.add_argument('--json', metavar='PATH', help='also write the rows as JSON')
  parser.add_argument('--ops', action='store_true',
                      help='instead of timing: where each case spends its time, XLA op time '
                      'by kind from a jax.profiler trace (stvit_jax/tools/op_profile.py)')
  args = parser.parse_args(argv)
  if args.rounds < 1:
    parser.error('--rounds must be >= 1')
  names = [n for n in args.models.split(',') if n]
  overrides = dict(args.set)
  if 'img_size' in overrides or 'num_classes' in overrides:
    parser.error('set the input size and class count with --image_size / --num_classes')
  recipe = dict(args.recipe)
  if recipe and not args.train:
    parser.error('--recipe sets training config fields: add --train')
  from stvit_jax import models
  unknown = [n for n in names if n not in models.names()]
  if unknown:
    parser.error(f'unknown model(s) {unknown}; valid: {", ".join(models.names())}')

  library = args.cpu_library or (xla_cpu.TRAINING if args.train else xla_cpu.INFERENCE)
  dev = jax.devices()[0]
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  log(f'device {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, '
      f'{args.dtype}, {"train" if args.train else "inference"}; '
      f'{xla_cpu.describe(library)}')
  cases = []
  for batch in args.batch:
    for name in names:
      try:
        case = model_case(name, batch, dtype=args.dtype, train=args.train,
                          image_size=args.image_size, num_classes=args.num_classes,
                          num_frames=args.num_frames, recipe=recipe,
                        cpu_library=library, **overrides)
      except ValueError as err:  # a bad --recipe / --set value, or batch vs accumulation
        parser.error(str(err))
      log(f'compiled {name} batch {batch} in {case.compile_s:.1f}s')
      cases.append(case)
  if args.ops:
    from stvit_jax.tools import op_profile  # pylint: disable=g-import-not-at-top
    mode = 'train step' if args.train else 'inference'
    print(op_profile.report(cases, calls=args.rounds,
                            about=f'{dev.device_kind} ({jax.default_backend()}), {args.dtype}, '
                            f'{mode}'))
    return 0
  peaks = peak_cases(args.dtype, args.matmul)
  measure(cases + peaks, rounds=args.rounds, warmup=args.warmup,
          min_time=args.min_time, log=log)
  table, peak = benchmark_table.rows(cases, peaks)
  peak_case = benchmark_table.peak_of(peaks)[1]
  mode = ("the trainer's train step (trainer.build: fwd+bwd+AdamW)" if args.train
          else 'inference')
  print(f'# {dev.device_kind} ({jax.default_backend()}), {args.dtype}, {mode}, '
        f'{args.image_size}px (video: {args.num_frames}-frame clips, img/s = clips/s), '
        f'{args.rounds} alternating rounds; jax {jax.__version__}')
  print(f'# malloc keeps freed memory (stvit_jax.runtime.cpu_allocator): {cpu_allocator.kept}; '
        f'{xla_cpu.describe(library)}')
  print('# measured peak: ' + ', '.join(
      f'{c.name} {args.dtype} = {c.flops_per_call / statistics.median(c.seconds) / 1e9:.1f}'
      for c in peaks) + f' GFLOP/s (median of rounds); %peak is of {peak / 1e9:.1f}')
  if args.train:
    print(f'# train step: {cases[0].recipe}')
  print(benchmark_table.format_table(table))
  if args.train:  # training images/s of each STViT beside its dense counterpart
    for row in table:
      dense = next((r for r in table if r['batch'] == row['batch']
                    and r['model'] == dense_counterpart(row['model'])), None)
      if dense is not None:
        print(f"# training, batch {row['batch']}: {row['model']} {row['images_per_s']:.1f} "
              f"img/s, {dense['model']} {dense['images_per_s']:.1f} img/s: "
              f"STViT / dense = {row['vs_dense']:.2f}x")
  device_peak = device_peak_memory()
  if device_peak is not None:
    print(f'# device peak memory in use (whole run): {device_peak / 2 ** 20:.0f} MiB')
  if args.json:
    meta = dict(device=dev.device_kind, backend=jax.default_backend(), jax=jax.__version__,
                dtype=args.dtype, train=args.train, image_size=args.image_size,
                cpu_library=xla_cpu.describe(library),
                rounds=args.rounds, peak_flops_per_s=peak, peak_case=peak_case.name,
                device_peak_memory_bytes=device_peak, overrides=overrides)
    with open(args.json, 'w') as f:
      json.dump({'meta': meta, 'rows': table}, f, indent=2)
  return 0


if __name__ == '__main__':
  cli.run(main)
