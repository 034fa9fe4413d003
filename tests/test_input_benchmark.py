"""The input pipeline benchmark: the ImageNet-like JPEG generator, the host requirement
table, and one tiny end-to-end run of the command. No timing is asserted."""
import numpy as np
import pytest
import tensorflow as tf

from stvit_jax.tools import benchmark
from stvit_jax.tools import input_benchmark
from stvit_jax.data.builders import imagenet_like


def test_generated_sizes_follow_imagenet_statistics():
  rng = np.random.default_rng(0)
  sizes = np.array([imagenet_like.sample_size(rng) for _ in range(4000)])
  long = sizes.max(1)
  assert 0.75 < np.mean(long == 500) < 0.85                # most longer sides are 500 px
  assert 0.2 < np.mean(sizes[:, 0] > sizes[:, 1]) < 0.3    # a quarter portrait
  assert 380 < sizes[:, 1].mean() < 500 and 330 < sizes[:, 0].mean() < 420
  assert long.max() > 1000 and long.min() < 300            # the odd large and small one


def test_jpegs_decode_at_their_sampled_size():
  jpegs = imagenet_like.make_jpegs(3, seed=1)
  (h, w) = imagenet_like.sample_size(np.random.default_rng(1))  # the first image's draw
  assert tf.io.decode_jpeg(jpegs[0]).shape == (h, w, 3)
  for jpeg in jpegs:
    assert tf.io.decode_jpeg(jpeg).shape[2] == 3
    assert len(jpeg) > 10_000  # photo-like detail, not a flat image
  assert 'mean' in imagenet_like.describe(jpegs)


def test_required_rate_matches_the_issue_arithmetic():
  # STViT-DeiT-S, 11.6 GFLOP per image, 40 % of a v5e chip's 197 TFLOP/s
  single = input_benchmark.host_requirement('v5e:2x4', 11.6e9, 0.4)
  assert single['chips_per_host'] == 8 and single['vcpus'] == 224 and single['hosts'] == 1
  assert single['img_s_chip'] == pytest.approx(0.4 * 197e12 / 11.6e9)
  assert single['img_s_host'] == pytest.approx(8 * single['img_s_chip'])
  assert 240 < single['img_s_vcpu'] < 245
  pod = input_benchmark.host_requirement('v4:2x2x4', 28.1e9, 0.4)
  assert (pod['chips'], pod['hosts'], pod['vcpus']) == (16, 4, 240)
  assert pod['img_s_vcpu'] == pytest.approx(4 * 0.4 * 275e12 / 28.1e9 / 240)


def test_topology_table_without_timing(capsys):
  assert benchmark.main(['--input', '--config=configs/deit_s.py', '--topology=v5e:4x4',
                         '--topology=v4:2x2x4', '--skip_timing']) == 0
  out = capsys.readouterr().out
  assert 'v5litepod-16' in out and 'v4-32' in out and '11.6 GFLOP' in out
  assert 'tpu_compile_proofs' in out
  with pytest.raises(SystemExit):
    benchmark.main(['--input', '--config=configs/deit_t.py', '--topology=v5e:4x4',
                    '--skip_timing'])  # no AOT figure for it: asks for --flops_per_image
  with pytest.raises(SystemExit):
    benchmark.main(['--input', '--topology=v9:4x4', '--skip_timing'])


@pytest.mark.slow
def test_command_times_train_and_eval_pipelines(tmp_path, capsys):
  argv = ['--input', '--config=configs/deit_s.py', f'--data_dir={tmp_path}', '--jpegs=6',
          '--num_train=24', '--num_eval=16', '--batch=4', '--rounds=1', '--warmup=1',
          '--batches=2', '--topology=v5e:2x4', '--profile']
  assert benchmark.main(argv) == 0
  out = capsys.readouterr().out
  for row in ('train: recipe (RandAugment rand-m9-mstd0.5-inc1, erasing 0.25)',
              'train: without RandAugment', 'train: without RandAugment and erasing', 'eval',
              'img/CPU-s', 'decode-and-crop', 'RandAugment rand-m9', 'needed'):
    assert row in out, row
  logged = []
  input_benchmark.prepare(str(tmp_path), num_jpegs=6, num_train=24, num_eval=16,
                          log=logged.append)
  assert 'reused' in logged[0]  # the generated set is kept for the next run
