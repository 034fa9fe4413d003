"""`benchmark --ops` (stvit_jax/tools/op_profile.py): ops sorted into kinds by their HLO, and
a real trace of a tiny model whose kinds add up to the traced op time. No timing is
asserted beyond consistency."""
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


def test_traced_kinds_add_up():
  def f(x, w):
    h = jax.nn.gelu(x @ w, approximate=False)
    return jax.nn.softmax(jnp.einsum('bqd,bkd->bqk', h, h), axis=-1)

  x = jnp.ones((4, 64, 32)) / 32
  w = jnp.ones((32, 32)) / 32
  compiled = jax.jit(f).lower(x, w).compile()
  profile = op_profile.profile(compiled, lambda: compiled(x, w), calls=2)
  assert set(profile['kinds']) == set(op_profile.KINDS)
  assert profile['total'] > 0 and profile['wall'] > 0
  assert abs(sum(profile['kinds'].values()) - profile['total']) <= 1e-6 * profile['total']
  assert profile['kinds']['matmul'] + profile['kinds']['batched matmul'] > 0
  table = op_profile.format_profiles([('f@4', profile)])
  assert 'matmul' in table and 'wall per call' in table


def test_cli_prints_the_op_table(capsys):
  assert benchmark.main(['--models', 'deit_tiny,stvit_deit_tiny', '--batch', '2', '--ops',
                         '--set', 'num_heads=2', '--set', 'embed_dim=32', '--set', 'depth=6',
                         '--image_size', '64', '--num_classes', '10', '--rounds', '1']) == 0
  printed = capsys.readouterr().out
  assert 'XLA op time per call by kind' in printed
  assert 'deit_tiny@2' in printed and 'stvit_deit_tiny@2' in printed
  for kind in op_profile.KINDS:
    assert kind in printed
