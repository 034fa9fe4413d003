"""Times on-device RandAugment (rand-m9-mstd0.5-inc1, DeiT's) and colour jitter, jitted, on a
(B, 224, 224, 3) uint8 batch, to set against the train step's time per image.

    JAX_PLATFORMS=cpu python scripts/bench_device_randaugment.py [--batch 64] [--iters 5]

Measured (median of --iters calls after a warm-up), 2026-12-08, JAX on CPU, 2 cores shared
with other jobs (load average ~10, so +-30%), batch 64 x 224:
  rand_augment 273 ms (4.3 ms/image), color_jitter 153 ms (2.4 ms/image).
Per op with every image taking it (apply_ops, same machine): Invert 0.3, Equalize 1.3,
Contrast 0.8, Sharpness 1.7, Rotate 3.3 ms/image before rows were gathered (on_rows).
No accelerator figure yet: this task drew no device machine.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from stvit_jax.data import augment
from stvit_jax.data import device_randaugment


def _time(fn, *args, iters):
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--iters', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (args.batch, args.size, args.size, 3), np.uint8))
  keys = jax.random.split(jax.random.key(0), args.batch)
  policy = augment.parse_policy('rand-m9-mstd0.5-inc1')
  hp = augment.Hparams(fill=(124, 116, 104))
  ra = jax.jit(device_randaugment.rand_augment, static_argnums=(2, 3))
  cj = jax.jit(device_randaugment.color_jitter, static_argnums=2)
  t_ra = _time(ra, keys, images, policy, hp, iters=args.iters)
  t_cj = _time(cj, keys, images, 0.4, iters=args.iters)
  print(f'{jax.devices()[0].device_kind} batch {args.batch}x{args.size}: rand_augment '
        f'{1e3 * t_ra:.1f} ms ({1e3 * t_ra / args.batch:.2f} ms/image), color_jitter '
        f'{1e3 * t_cj:.1f} ms ({1e3 * t_cj / args.batch:.2f} ms/image)')


if __name__ == '__main__':
  main()
