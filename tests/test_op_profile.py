"""`benchmark --ops` (stvit_jax/tools/op_profile.py): ops sorted into kinds by their HLO, and
real traces of programs whose time is known to be one kind, and the printed table whose
rows add up. No speed is asserted, only where the time goes.""" 
import jax
import jax.numpy as jnp

from stvit_jax.tools import benchmark, op_profile

HLO = """HloModule jit_f, entry_computation_layout={(f32[8,4]{1,0})->f32[8,4]{1,0}}

%fused_linear (p0: f32[8,4], p1: f32[4,4]) -> f32[8,4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_attn (p0: f32[2,3,4], p1: f32[2,4,3]) -> f32[2,3,3] {
  %p0 = f32[2,3,4]{2,1,0} parameter(0)
  %p1 = f32[2,4,3]{2,1,0} parameter(1)
  ROOT %dot.2 = f32[2,3,3]{2,1,0} dot(%p0, %p1), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.9 = f32[] add(%a, %b)
}

%fused_gelu (p0: f32[8,4]) -> f32[8,4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %erf.1 = f32[8,4]{1,0} erf(%p0)
  ROOT %multiply.1 = f32[8,4]{1,0} multiply(%p0, %erf.1)
}

%fused_t (p0: f32[8,4]) -> f32[4,8] {
  %p0 = f32[8,4]{1,0} parameter(0)
  ROOT %transpose.1 = f32[4,8]{0,1} transpose(%p0), dimensions={1,0}
}

ENTRY %main (x: f32[8,4], w: f32[4,4]) -> f32[8,4] {
  %x = f32[8,4]{1,0} parameter(0)
  %w = f32[4,4]{1,0} parameter(1)
  %linear_fusion = f32[8,4]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_linear
  %gelu_fusion = f32[8,4]{1,0} fusion(%linear_fusion), kind=kLoop, calls=%fused_gelu
  %t_fusion = f32[4,8]{0,1} fusion(%gelu_fusion), kind=kLoop, calls=%fused_t
  %zero = f32[] constant(0)
  %reduce.3 = f32[8] reduce(%gelu_fusion, %zero), dimensions={1}, to_apply=%add
  ROOT %add.4 = f32[8,4]{1,0} add(%gelu_fusion, %gelu_fusion)
}
"""


def test_kinds_from_hlo():
  kinds = op_profile.classify(HLO)
  assert op_profile.module_name(HLO) == 'jit_f'
  assert kinds['linear_fusion'] == 'matmul'
  assert kinds['gelu_fusion'] == 'transcendental'
  assert kinds['t_fusion'] == 'data movement'
  assert kinds['reduce.3'] == 'reduction'
  assert kinds['add.4'] == 'other elementwise'
  assert kinds['dot.2'] == 'batched matmul'  # inside its computation: a batched dot


def _share(profile, kind):
  return profile['kinds'][kind] / profile['total']


def test_traced_time_lands_in_the_kind_that_dominates_the_program():
  """Two programs whose op time is known to be one kind: a large matmul with a tiny
  elementwise tail, and a chain of transcendentals on a large array. The traced time
  must land in that kind (the classification and the trace agree op by op), and the
  op time must be a plausible part of the wall time (not a sum over seeded zeros)."""
  a = jnp.ones((384, 384)) / 384
  matmul = jax.jit(lambda a: (a @ a) + 1.0).lower(a).compile()
  prof = op_profile.profile(matmul, lambda: matmul(a), calls=3)
  assert _share(prof, 'matmul') > 0.6, prof['kinds']
  assert _share(prof, 'transcendental') < 0.2, prof['kinds']

  x = jnp.linspace(0.0, 1.0, 1 << 20)
  trans = jax.jit(lambda x: jnp.tanh(jnp.exp(jnp.sin(x)))).lower(x).compile()
  prof = op_profile.profile(trans, lambda: trans(x), calls=3)
  assert _share(prof, 'transcendental') > 0.6, prof['kinds']
  assert prof['kinds']['matmul'] == 0 and prof['kinds']['batched matmul'] == 0
  # Ops run one after another on CPU: their time is within the wall time of a call.
  assert 0 < prof['total'] <= 1.5 * prof['wall'], (prof['total'], prof['wall'])


def test_cli_prints_the_op_table(capsys):
  assert benchmark.main(['--models', 'deit_tiny,stvit_deit_tiny', '--batch', '2', '--ops',
                         '--set', 'num_heads=2', '--set', 'embed_dim=32', '--set', 'depth=6',
                         '--image_size', '64', '--num_classes', '10', '--rounds', '1']) == 0
  printed = capsys.readouterr().out
  assert 'XLA op time per call by kind' in printed
  assert 'deit_tiny@2' in printed and 'stvit_deit_tiny@2' in printed
  rows = {}
  for line in printed.splitlines():
    for kind in (*op_profile.KINDS, 'all ops'):
      if line.startswith(kind) and line[len(kind):len(kind) + 2].isspace():
        cells = line[len(kind):].split()
        rows[kind] = [(float(ms), float(share.rstrip('%'))) for ms, share in zip(cells[::2], cells[1::2])]
  assert set(rows) == {*op_profile.KINDS, 'all ops'}, printed
  for case in range(2):
    ms = [rows[k][case][0] for k in op_profile.KINDS]
    shares = [rows[k][case][1] for k in op_profile.KINDS]
    # The rows are the parts of 'all ops' (to the table's rounding) ...
    assert abs(sum(ms) - rows['all ops'][case][0]) <= 0.05 * len(ms) + 1e-9, printed
    assert abs(sum(shares) - 100) <= 0.05 * len(shares) + 0.1, printed
    # ... and the model's dots were traced and filed as dots (a tiny model's time is
    # not dominated by them, so only their presence is a fact).
    assert rows['matmul'][case][1] + rows['batched matmul'][case][1] > 0, printed
