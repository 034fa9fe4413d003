"""The benchmark's table: rows of images/s, speed-ups and %peak from timed cases, and
their text form (stvit_jax/tools/benchmark.py times the cases; its doc explains the columns)."""
from __future__ import annotations

import statistics


def _paired_ratio(rates, base):
  # Paired by round: both were timed seconds apart, so drift cancels in the ratio.
  return statistics.median(r / b for r, b in zip(rates, base))


def peak_of(peak_cases):
  """(FLOP/s, case) of the fastest peak case, by its median over rounds."""
  return max(((c.flops_per_call / statistics.median(c.seconds), c) for c in peak_cases),
             key=lambda rate_case: rate_case[0])


def rows(cases, peak_cases):
  """Table rows (dicts). Speed-ups are against the first model at the same batch
  and against the dense counterpart, paired by round; %peak is of the fastest peak case."""
  from stvit_jax import models  # the registry imports every family: only when needed
  peak, _ = peak_of(peak_cases)
  out, first = [], {}
  rates_of = {(c.name, c.batch): [c.batch / s for s in c.seconds] for c in cases}
  for case in cases:
    per_call = statistics.median(case.seconds)
    rates = rates_of[case.name, case.batch]
    ips = case.batch / per_call
    speedup = _paired_ratio(rates, first.setdefault(case.batch, rates))
    dense = rates_of.get((models.dense_counterpart(case.name), case.batch))
    achieved = case.flops_per_call / per_call
    out.append(dict(
        model=case.name, batch=case.batch, images_per_s=ips,
        spread=(max(rates) - min(rates)) / ips, ms_per_batch=per_call * 1e3,
        images_per_cpu_s=(case.batch / statistics.median(case.cpu_seconds)
                          if case.cpu_seconds else None),
        speedup=speedup, vs_dense=None if dense is None else _paired_ratio(rates, dense),
        gmacs=case.macs_per_image / 1e9,
        gflops_per_s=achieved / 1e9, fraction_of_peak=achieved / peak,
        compile_s=case.compile_s, memory_mib=(None if case.memory_bytes is None
                                              else case.memory_bytes / 2 ** 20),
        rounds=len(case.seconds), images_per_s_rounds=rates))
  return out, peak


COLUMNS = (  # header, row key, format
    ('model', 'model', '{}'), ('batch', 'batch', '{}'), ('img/s', 'images_per_s', '{:.1f}'),
    ('spread', 'spread', '{:.0%}'), ('img/CPU-s', 'images_per_cpu_s', '{:.1f}'),
    ('ms/batch', 'ms_per_batch', '{:.1f}'),
    ('speed-up', 'speedup', '{:.2f}x'), ('vs dense', 'vs_dense', '{:.2f}x'),
    ('GMACs', 'gmacs', '{:.2f}'),
    ('GFLOP/s', 'gflops_per_s', '{:.1f}'), ('%peak', 'fraction_of_peak', '{:.0%}'),
    ('compile s', 'compile_s', '{:.1f}'), ('mem MiB', 'memory_mib', '{:.0f}'))


def format_table(table):
  cells = [[h for h, _, _ in COLUMNS]]
  for row in table:
    cells.append(['-' if row[k] is None else f.format(row[k]) for _, k, f in COLUMNS])
  widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
  lines = ['  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(r, widths))) for r in cells]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)
