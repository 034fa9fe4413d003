"""timm's PyTorch DeiT / Swin against stvit_jax's, in one process, rounds alternated (run by hand).

    pip install torch==2.13.0 && pip install timm==1.0.31 --no-deps   # if `import torch, timm` fails
    python scripts/bench_timm.py --model deit_small --batch 32 --threads 2 --rounds 7
    python scripts/bench_timm.py --model swin_small --batch 32 --threads 2 --rounds 7

Both sides run inference in float32 on the same random images, on the same
`--threads` CPU cores: the process is confined to them with
`os.sched_setaffinity` (XLA's CPU client sizes its thread pool from the
affinity mask; a no-op on a 2-core machine at --threads 2) and PyTorch gets
`torch.set_num_threads(--threads)`.
PyTorch runs `timm.create_model(<timm name>).eval()` (deit_*: <model>_patch16_224,
swin_*: <model>_patch4_window7_224) under `torch.inference_mode()` (NCHW); JAX
runs the compiled forward of `stvit_jax.models.create(<model>)` (NHWC), exactly
as `stvit_jax.tools.benchmark` does (on CPU, dots and convolutions by Eigen unless
`--cpu_library ynnpack`: stvit_jax/runtime/xla_cpu.py). Each round times `--steps` calls of each
framework, alternating which goes first, with a short pause between frameworks
so that the other one's spinning worker threads have gone to sleep. Prints
images/s per round and the median ratio, and images per CPU-second of the
process (robust to other load on a shared machine). As in `stvit_jax.tools.benchmark`,
the process keeps freed memory (`stvit_jax.runtime.cpu_allocator`), for both frameworks.

timm imports torchvision at import time and there is no CPU torchvision wheel
here, so when torchvision is missing an import stub is installed
(scripts/torchvision_stub.py): the ViT classes never call torchvision.
"""
import argparse
import os
import statistics
import time

import torchvision_stub  # scripts/: sys.path[0] when run as a script


TIMM_NAMES = {**{f'deit_{s}': f'deit_{s}_patch16_224' for s in ('tiny', 'small', 'base')},
              **{f'swin_{s}': f'swin_{s}_patch4_window7_224' for s in ('tiny', 'small', 'base')}}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='deit_small', choices=sorted(TIMM_NAMES))
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--steps', type=int, default=1, help='calls per framework per round')
  parser.add_argument('--pause', type=float, default=0.5, help='seconds between frameworks')
  parser.add_argument('--cpu_library', choices=('eigen', 'ynnpack'), default='eigen',
                      help="XLA:CPU's library for JAX's dots and convolutions (stvit_jax/runtime/xla_cpu.py)")
  args = parser.parse_args()

  cores = sorted(os.sched_getaffinity(0))
  if len(cores) > args.threads:
    os.sched_setaffinity(0, cores[:args.threads])
  from stvit_jax.runtime import cpu_allocator
  cpu_allocator.keep_freed_memory()  # before either framework starts its threads
  stubbed = torchvision_stub.install()
  import numpy as np
  import timm
  import torch
  import jax
  from stvit_jax.tools import benchmark
  from stvit_jax.runtime import xla_cpu

  torch.set_num_threads(args.threads)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((args.batch, 224, 224, 3), np.float32)
  tm = timm.create_model(TIMM_NAMES[args.model], pretrained=False).eval()
  x_torch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

  def torch_step():
    with torch.inference_mode():
      return tm(x_torch)

  # the compiled JAX forward, as in the table
  case = benchmark.model_case(args.model, args.batch, cpu_library=args.cpu_library)
  steps = {'timm (PyTorch)': torch_step, 'stvit_jax (JAX)': lambda: jax.block_until_ready(case.step())}
  for fn in steps.values():  # warm-up: allocator, caches, lazy init
    fn()
    fn()
  rates = {name: [] for name in steps}
  cpu_rates = {name: [] for name in steps}
  names = list(steps)
  for r in range(args.rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      time.sleep(args.pause)
      start, cpu = time.perf_counter(), time.process_time()
      for _ in range(args.steps):
        steps[name]()
      rates[name].append(args.batch * args.steps / (time.perf_counter() - start))
      cpu_rates[name].append(args.batch * args.steps / (time.process_time() - cpu))
    print(f'round {r + 1}: ' + ', '.join(f'{n} {rates[n][-1]:.2f} img/s' for n in names),
          flush=True)
  print(f'# {args.model}, batch {args.batch}, float32 inference, {args.threads} threads '
        f'(cores {sorted(os.sched_getaffinity(0))}); torch {torch.__version__} '
        f'({torch.get_num_threads()} threads), timm {timm.__version__}, jax {jax.__version__}'
        f'{", torchvision stubbed" if stubbed else ""}; {xla_cpu.describe(args.cpu_library)}')
  for name in names:
    v = rates[name]
    print(f'{name:16s} median {statistics.median(v):6.2f} img/s   min {min(v):6.2f}   '
          f'max {max(v):6.2f}   {statistics.median(cpu_rates[name]):6.2f} img/CPU-s')
  ratio = [j / t for j, t in zip(rates[names[1]], rates[names[0]])]
  print(f'JAX / PyTorch per round: median {statistics.median(ratio):.2f}x '
        f'(min {min(ratio):.2f}x, max {max(ratio):.2f}x)')
  cpu_ratio = [j / t for j, t in zip(cpu_rates[names[1]], cpu_rates[names[0]])]
  print(f'JAX / PyTorch per CPU-second: median {statistics.median(cpu_ratio):.2f}x '
        f'(min {min(cpu_ratio):.2f}x, max {max(cpu_ratio):.2f}x)')


if __name__ == '__main__':
  main()
