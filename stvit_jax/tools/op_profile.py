"""Where a compiled step's time goes: XLA op time by kind, from a jax.profiler trace.

    python -m stvit_jax.tools.benchmark --models swin_small,stvit_r_swin_small --batch 64 --ops

For each case of the benchmark, `calls` calls of its compiled step run under
`jax.profiler.trace`; the trace's XLA op events of that executable (the
`hlo_op` stat: one event per thunk on CPU, per kernel on GPU) are summed per
op, and each op is sorted into a kind by what its HLO computes (a fusion by
the instructions inside it):

  matmul              a dot without batch dimensions: Linear layers
  batched matmul      a dot with batch dimensions: attention's q k^T and a v
  convolution         stems and patch embeddings
  gather / scatter    indexed reads and writes (key windows, bias tables)
  reduction           LayerNorm, softmax and pooling statistics
  transcendental      exp / erf / tanh / log outside a dot or a reduction (GELU, softmax)
  data movement       transposes, copies, concatenations, pads, slices
  other elementwise   adds, multiplies, selects, casts

XLA fuses across these lines: a dot's fusion may carry a bias add or a GELU;
it counts as a matmul. An op's time is its wall duration (XLA:CPU spreads one
op over the cores); independent ops may overlap, so the op times can add up to
more than the wall time per call, printed below them. Everything but the
matmuls is memory-bound work whose FLOPs hardly count: its share of the time
is what a model loses against the matmul ceiling.
"""
from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time

import jax

KINDS = ('matmul', 'batched matmul', 'convolution', 'gather / scatter', 'reduction',
         'transcendental', 'data movement', 'other elementwise')
_MOVEMENT = {'copy', 'transpose', 'bitcast', 'reshape', 'parameter', 'concatenate', 'slice',
             'dynamic-slice', 'dynamic-update-slice', 'pad', 'broadcast', 'constant', 'tuple',
             'get-tuple-element', 'reverse', 'iota'}
_TRANSCENDENTAL = {'exponential', 'erf', 'tanh', 'log', 'logistic', 'rsqrt', 'sqrt', 'power',
                   'exponential-minus-one', 'log-plus-one'}
_INSTRUCTION = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(')


def _computations(hlo_text):
  """{computation name: [instruction lines]} of an HLO module's text."""
  comps, current = {}, None
  for line in hlo_text.splitlines():
    head = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$', line)
    if head and not line.startswith(' '):
      current = comps.setdefault(head.group(1), [])
    elif current is not None and line.strip() and line.strip() != '}':
      current.append(line)
  return comps


def _inner(comps, lines, depth=0):
  """[(opcode, line)] of `lines` and of the computations they call (fusions, reductions)."""
  out = []
  for line in lines:
    m = _INSTRUCTION.match(line)
    if m:
      out.append((m.group(2), line))
    if depth < 4:
      for called in re.findall(r'(?:calls|to_apply)=%?([\w.\-]+)', line):
        out += _inner(comps, comps.get(called, []), depth + 1)
  return out


def kind_of(ops):
  """The kind (one of KINDS) of an op given [(opcode, line)] of what it computes."""
  codes = {code for code, _ in ops} - {'fusion', 'call'}  # containers: their insides count
  dots = [line for code, line in ops if code == 'dot']
  if dots:
    batched = any(re.search(r'lhs_batch_dims=\{\d', line) for line in dots)
    return 'batched matmul' if batched else 'matmul'
  if 'convolution' in codes:
    return 'convolution'
  if codes & {'gather', 'scatter'}:
    return 'gather / scatter'
  if codes & {'reduce', 'reduce-window'}:
    return 'reduction'
  if codes & _TRANSCENDENTAL:
    return 'transcendental'
  if codes <= _MOVEMENT:
    return 'data movement'
  return 'other elementwise'


def classify(hlo_text):
  """{instruction name: kind} for every instruction of a compiled HLO module."""
  comps = _computations(hlo_text)
  kinds = {}
  for lines in comps.values():
    for line in lines:
      m = _INSTRUCTION.match(line)
      if m:
        kinds[m.group(1)] = kind_of(_inner(comps, [line]))
  return kinds


def module_name(hlo_text):
  m = re.match(r'HloModule ([\w.\-]+)', hlo_text)
  return m.group(1) if m else None


def op_times(step, module, calls=2):
  """({hlo op name: ns per call}, wall ns per call) of the XLA ops of module `module`
  while `step()` (which returns what to block on) runs `calls` times under the profiler."""
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.block_until_ready(step())  # warm: nothing of the first call's set-up in the trace
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter_ns()
      for _ in range(calls):
        out = step()
      jax.block_until_ready(out)
      wall = (time.perf_counter_ns() - start) / calls
    paths = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)
    if not paths:
      raise RuntimeError(f'jax.profiler wrote no trace under {trace_dir}')
    data = jax.profiler.ProfileData.from_file(paths[0])
    host, device = collections.Counter(), collections.Counter()
    for plane in data.planes:
      times = device if plane.name.startswith('/device:') else host
      for line in plane.lines:
        for event in line.events:
          stats = dict(event.stats)
          if stats.get('hlo_module') == module and 'hlo_op' in stats:
            times[stats['hlo_op']] += event.duration_ns
  # An accelerator's kernels are on its device plane; the host plane then only holds
  # their launches. On CPU the ops run on the host plane.
  times = device or host
  if not times:
    raise RuntimeError(f'the trace holds no XLA op events of {module!r}; '
                       f'planes: {[p.name for p in data.planes]}')
  return {op: ns / calls for op, ns in times.items()}, wall


def profile(compiled, step, calls=2):
  """{'kinds': {kind: ns per call}, 'top': [(op, kind, ns per call)], 'total': op ns per
  call, 'wall': ns per call}."""
  hlo = compiled.as_text()
  kinds = classify(hlo)
  times, wall = op_times(step, module_name(hlo), calls)
  by_kind = collections.Counter({k: 0.0 for k in KINDS})
  for op, ns in times.items():
    by_kind[kinds.get(op, 'other elementwise')] += ns
  top = sorted(((op, kinds.get(op, '?'), ns) for op, ns in times.items()), key=lambda r: -r[2])
  return {'kinds': dict(by_kind), 'top': top[:5], 'total': sum(times.values()), 'wall': wall}


def format_profiles(named):
  """Side-by-side table of [(case name, profile)]: op-ms per call and share of op time."""
  width = max(14, *(len(n) for n, _ in named))
  head = f'{"op kind":<18}' + ''.join(f' {n:>{width}}' for n, _ in named)
  sub = f'{"":<18}' + ''.join(f' {"op-ms":>{width - 8}}  {"share":>5}' for _ in named)
  lines = [head, sub]
  for kind in KINDS:
    cells = ''.join(f' {p["kinds"][kind] / 1e6:{width - 8}.1f}  {100 * p["kinds"][kind] / max(p["total"], 1):4.1f}%'
                    for _, p in named)
    lines.append(f'{kind:<18}{cells}')
  lines.append(f'{"all ops":<18}' + ''.join(f' {p["total"] / 1e6:{width - 8}.1f}  100.0%'
                                           for _, p in named))
  lines.append(f'{"wall per call":<18}' + ''.join(f' {p["wall"] / 1e6:{width - 8}.1f}       '
                                                 for _, p in named))
  for name, p in named:
    lines.append(f'# {name}: largest ops ' + ', '.join(
        f'{op} ({kind}) {ns / 1e6:.1f} ms' for op, kind, ns in p['top']))
  return '\n'.join(lines)


def report(cases, *, calls, about):
  """The `benchmark --ops` output for benchmark `Case`s (each with `compiled` and `step`)."""
  named = [(f'{c.name}@{c.batch}', profile(c.compiled, c.step, calls=calls)) for c in cases]
  return (f'# {about}: XLA op time per call by kind, {calls} traced calls\n'
          + format_profiles(named))
