"""The benchmark tool on tiny models: one table row per (model, batch), the
right GMACs, consistent derived columns, JSON, training steps. No timing is
asserted (speed is measured by the command, never by tests)."""
import json

import pytest

from stvit_jax.tools import benchmark, benchmark_table
from stvit_jax import models

FAST = ['--rounds', '2', '--warmup', '1', '--min_time', '0', '--matmul', '128']


# Multiply-accumulates of the reduced models the tests build (C = 32, 2 heads, 6 blocks,
# 64 px, 16 px patches: 16 image tokens; 10 classes), counted by hand. A block with n
# queries and m keys/values: q n*C*C + kv m*C*2C + q@k and attn@v 2*n*m*C + proj n*C*C
# + MLP 2*n*C*4C.
def block_macs(n, m):
  return n * 32 * 32 + m * 32 * 64 + 2 * n * m * 32 + n * 32 * 32 + 2 * n * 32 * 128


PATCH_MACS = 16 * (16 * 16 * 3) * 32  # 16 patches x 768 inputs x 32 outputs
HEAD_MACS = 32 * 10
# DeiT: 6 blocks on 16 image tokens + the class token.
DEIT_TINY_REDUCED_MACS = PATCH_MACS + 6 * block_macs(17, 17) + HEAD_MACS  # 1,757,888
# STViT: 4 base blocks on 16 tokens, STGM layer 1 (16 centres onto the 16 image tokens)
# and layer 2 (onto 32: centres + image tokens), no class token; weighted pooling adds its
# 1x1 score conv, 16 positions x 32 (its 3x3 depthwise conv runs as elementwise
# products, which the counter, counting dot_general and conv ops only, does not see).
STVIT_TINY_REDUCED_MACS = (PATCH_MACS + 4 * block_macs(16, 16) + block_macs(16, 16)
                           + block_macs(16, 32) + 16 * 32 + HEAD_MACS)  # 1,721,152


def test_table_and_json(tmp_path, capsys):
  out = tmp_path / 'rows.json'
  assert benchmark.main(['--models', 'deit_tiny,stvit_deit_tiny', '--batch', '1,2',
                         '--json', str(out), '--set', 'num_heads=2', '--set', 'embed_dim=32',
                         '--set', 'depth=6', '--image_size', '64', '--num_classes', '10',
                         *FAST]) == 0
  printed = capsys.readouterr().out
  assert 'measured peak: matmul 128^3' in printed
  for header in ('img/s', 'speed-up', 'GMACs', '%peak', 'compile s', 'mem MiB'):
    assert header in printed
  result = json.loads(out.read_text())
  rows = result['rows']
  assert [(r['model'], r['batch']) for r in rows] == [
      ('deit_tiny', 1), ('stvit_deit_tiny', 1), ('deit_tiny', 2), ('stvit_deit_tiny', 2)]
  peak = result['meta']['peak_flops_per_s']
  for row in rows:
    assert row['rounds'] == 2 and len(row['images_per_s_rounds']) == 2
    assert row['images_per_s'] == pytest.approx(row['batch'] / row['ms_per_batch'] * 1e3)
    assert row['gflops_per_s'] == pytest.approx(2 * row['gmacs'] * row['images_per_s'])
    assert row['fraction_of_peak'] == pytest.approx(row['gflops_per_s'] * 1e9 / peak)
    assert row['compile_s'] > 0 and row['memory_mib'] > 0
  # Speed-ups are against the first model at the same batch.
  assert rows[0]['speedup'] == 1 and rows[2]['speedup'] == 1
  paired = [a / b for a, b in zip(rows[1]['images_per_s_rounds'], rows[0]['images_per_s_rounds'])]
  assert rows[1]['speedup'] == pytest.approx(sum(paired) / 2)  # median of 2 rounds
  # deit_tiny is stvit_deit_tiny's dense counterpart (and the first model here).
  assert rows[1]['vs_dense'] == rows[1]['speedup'] and rows[3]['vs_dense'] == rows[3]['speedup']
  assert rows[0]['vs_dense'] is None and 'vs dense' in printed
  # GMACs: the paper-convention (fvcore) count of these reduced models, by hand.
  assert (DEIT_TINY_REDUCED_MACS, STVIT_TINY_REDUCED_MACS) == (1_757_888, 1_721_152)
  assert rows[0]['gmacs'] * 1e9 == pytest.approx(DEIT_TINY_REDUCED_MACS)
  assert rows[1]['gmacs'] * 1e9 == pytest.approx(STVIT_TINY_REDUCED_MACS)


def test_derived_columns_by_hand():
  """benchmark_table.rows on cases with literal timings: every column worked out by hand."""
  def case(name, seconds, flops_per_call, macs, batch=4):
    return benchmark.Case(name, batch, None, flops_per_call, macs, compile_s=1.5,
                          memory_bytes=3 * 2 ** 20, seconds=seconds, cpu_seconds=[0.02] * 3)
  dense = case('deit_tiny', [0.010, 0.008, 0.0125], 1.2e10, 1.5e9)  # rates 400, 500, 320
  sparse = case('stvit_deit_tiny', [0.005, 0.004, 0.010], 6e9, 0.75e9)  # 800, 1000, 400
  peaks = [benchmark.Case('matmul a', 1, None, 2e9, seconds=[0.001] * 3),   # 2e12 FLOP/s
           benchmark.Case('matmul b', 1, None, 2e9, seconds=[0.002] * 3)]   # 1e12
  (d, s), peak = benchmark_table.rows([dense, sparse], peaks)
  assert peak == 2e12
  assert d['images_per_s'] == pytest.approx(400) and d['ms_per_batch'] == pytest.approx(10)
  assert d['spread'] == pytest.approx((500 - 320) / 400)
  assert d['gmacs'] == 1.5 and d['gflops_per_s'] == pytest.approx(1200)  # 1.2e10 / 10 ms
  assert d['fraction_of_peak'] == pytest.approx(0.6)  # 1.2e12 of 2e12
  assert d['images_per_cpu_s'] == pytest.approx(200)  # 4 images / 20 ms
  assert (d['speedup'], d['vs_dense'], d['rounds']) == (1, None, 3)
  assert d['compile_s'] == 1.5 and d['memory_mib'] == 3
  assert s['images_per_s'] == pytest.approx(800) and s['gflops_per_s'] == pytest.approx(1200)
  # per round 800/400, 1000/500, 400/320 = 2, 2, 1.25: median 2
  assert s['speedup'] == pytest.approx(2) and s['vs_dense'] == pytest.approx(2)


@pytest.mark.slow  # ~70 s on 2 cores
def test_train_step_updates_and_counts_three_forwards():
  case = benchmark.model_case('stvit_deit_small', 2, train=True, image_size=64, num_classes=10,
                              embed_dim=32, num_heads=2, depth=6, num_base_layers=2)
  # By hand (the blocks above): 2 base + 2 STGM + 2 semantic blocks = the 4 + 2 of
  # STVIT_TINY_REDUCED_MACS (at N = 16 a semantic block costs a base block).
  assert case.macs_per_image == STVIT_TINY_REDUCED_MACS
  snapshot = [x.copy() for x in jax_leaves(case.step()[0])]  # the state is donated: copy it
  after = jax_leaves(case.step()[0])  # the step returns the new (params, rest, opt_state)
  assert all(a.shape == s.shape for a, s in zip(after, snapshot))
  assert any((a != s).any() for a, s in zip(after, snapshot))  # AdamW moved the parameters
  # forward 2 x MACs, backward 4 x MACs, batch 2: 6 x 1,721,152 x 2
  assert case.flops_per_call == 20_653_824


def jax_leaves(tree):
  import jax
  return [x for x in jax.tree.leaves(tree) if hasattr(x, 'shape') and x.ndim > 0]


def test_swin_and_bfloat16_cases_build():
  """A Swin-family case and a bfloat16 matmul: the table's other paths."""
  case = benchmark.model_case('swin_tiny', 1, dtype='bfloat16', image_size=64, num_classes=10,
                              embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                              window_size=4)
  peak = benchmark.matmul_case('bfloat16', 64)
  benchmark.measure([case, peak], rounds=1, warmup=1, min_time=0)
  rows, flops_per_s = benchmark_table.rows([case], [peak])
  assert rows[0]['images_per_s'] > 0 and flops_per_s > 0
  assert 'swin_tiny' in benchmark_table.format_table(rows)


def test_dense_counterparts():
  assert [benchmark.dense_counterpart(n) for n in (
      'stvit_deit_small', 'stvit_r_swin_base', 'stvit_swin_tiny', 'deit_small', 'swin_small')
  ] == ['deit_small', 'swin_base', 'swin_tiny', None, None]
  for name in models.names():  # every STViT's counterpart is a registered model
    if benchmark.dense_counterpart(name):
      assert benchmark.dense_counterpart(name) in models.names(), name


def test_options_and_errors(capsys):
  for argv, message in ((['--models', 'nope'], 'unknown model'),
                        (['--set', 'depth'], 'expected KEY=VALUE'),
                        (['--batch', '0'], 'positive integers'),
                        (['--set', 'img_size=96'], '--image_size')):
    with pytest.raises(SystemExit):
      benchmark.main(argv)
    assert message in capsys.readouterr().err
