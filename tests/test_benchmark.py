"""The benchmark tool on tiny models: one table row per (model, batch), the
right GMACs, consistent derived columns, JSON, training steps. No timing is
asserted (speed is measured by the command, never by tests)."""
import json

import pytest

from stvit_jax.tools import benchmark, benchmark_table, flops
from stvit_jax import models

FAST = ['--rounds', '2', '--warmup', '1', '--min_time', '0', '--matmul', '128']


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
  # GMACs are the paper-convention count of the same model.
  model = models.create('stvit_deit_tiny', embed_dim=32, num_heads=2, depth=6, img_size=64,
                        num_classes=10)
  assert rows[1]['gmacs'] * 1e9 == pytest.approx(flops.model_macs(model, 64))


@pytest.mark.slow  # ~70 s on 2 cores
def test_train_step_updates_and_counts_three_forwards():
  case = benchmark.model_case('stvit_deit_small', 2, train=True, image_size=64, num_classes=10,
                              embed_dim=32, num_heads=2, depth=6, num_base_layers=2)
  snapshot = [x.copy() for x in jax_leaves(case.step()[0])]  # the state is donated: copy it
  after = jax_leaves(case.step()[0])  # the step returns the new (params, rest, opt_state)
  assert all(a.shape == s.shape for a, s in zip(after, snapshot))
  assert any((a != s).any() for a, s in zip(after, snapshot))  # AdamW moved the parameters
  assert case.flops_per_call == pytest.approx(6 * case.macs_per_image * 2)


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
