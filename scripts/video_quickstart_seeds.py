"""The video quickstart over seeds and XLA:CPU libraries: final top-1 of each run.

  python scripts/video_quickstart_seeds.py --seeds 0 1 2 3 4 --libraries ynnpack eigen
  python scripts/video_quickstart_seeds.py --seeds 0 1 2 --variant frame

Each run is the README's command (`python -m stvit_jax.main
--config=configs/video_quickstart.py[:variant]`) in a fresh workdir under --root, one
after another (each uses every core). `ynnpack` is XLA:CPU's default for training
steps; `eigen` turns YNNPACK's fusions off through XLA_FLAGS
(stvit_jax/runtime/xla_cpu.py), so dots and convolutions run on other kernels with
other rounding. Prints one row per run (top-1, top-5 of the 3-clip evaluation, wall
seconds of the whole command) and the range. Not part of CI: about 7 minutes a run on
a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
EIGEN_FLAG = '--xla_cpu_experimental_ynn_fusion_type='


def environment(library):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if library == 'eigen':
    env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} {EIGEN_FLAG}'.strip()
  return env


def run(seed, library, variant, root, extra):
  config = 'configs/video_quickstart.py' + (f':{variant}' if variant else '')
  workdir = os.path.join(root, f'{variant or "default"}-{library}-seed{seed}')
  if os.path.exists(workdir):  # a fresh run each time: never a resume or old numbers
    shutil.rmtree(workdir)
  command = [sys.executable, '-m', 'stvit_jax.main', f'--config={config}',
             f'--config.seed={seed}', f'--workdir={workdir}', *extra]
  start = time.perf_counter()
  with open(workdir + '.log', 'w') as log:
    code = subprocess.call(command, cwd=ROOT, env=environment(library), stdout=log,
                           stderr=subprocess.STDOUT)
  wall = time.perf_counter() - start
  if code:
    return dict(seed=seed, library=library, wall=wall, error=f'exit {code}, see {workdir}.log')
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  return dict(seed=seed, library=library, wall=wall, top1=summary['eval_top1'],
              top5=summary['eval_top5'])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
  parser.add_argument('--libraries', nargs='+', choices=('ynnpack', 'eigen'),
                      default=['ynnpack'])
  parser.add_argument('--variant', default='', help="a config variant, e.g. 'frame'")
  parser.add_argument('--root', default='runs/video_quickstart_seeds')
  parser.add_argument('extra', nargs='*', help='more --config.a.b=v overrides, after --')
  args = parser.parse_args(argv)
  os.makedirs(args.root, exist_ok=True)
  rows = []
  for library in args.libraries:
    for seed in args.seeds:
      row = run(seed, library, args.variant, os.path.abspath(args.root), args.extra)
      rows.append(row)
      result = row.get('error') or f'top-1 {100 * row["top1"]:.2f}%  top-5 {100 * row["top5"]:.2f}%'
      print(f'{args.variant or "default"}  {library:8s} seed {seed}: {result}  '
            f'({row["wall"]:.0f} s)', flush=True)
  done = [r['top1'] for r in rows if 'top1' in r]
  if done:
    print(f'top-1 over {len(done)} runs: {100 * min(done):.2f}% .. {100 * max(done):.2f}%')
  return 1 if len(done) < len(rows) else 0


if __name__ == '__main__':
  sys.exit(main())
