"""The DCN bytes of a compiled step (stvit_jax/tools/dcn.py): the HLO parser on hand-written
snippets in each replica-group spelling and libtpu's megascale sends, with byte counts
worked by hand, and on a real compile over 8 fake CPU devices as 2 "slices" of 4."""
import os
import subprocess
import sys
import textwrap

import pytest

from stvit_jax.tools import dcn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_OF_FOUR = [0, 0, 0, 0, 1, 1, 1, 1]  # devices 0-3 slice 0, 4-7 slice 1


@pytest.mark.parametrize('line, groups', [
    ('%a = f32[8]{0} all-reduce(%x), channel_id=1, replica_groups={{0,1},{2,3}}, to_apply=%add',
     ((0, 1), (2, 3))),
    ('%a = f32[8]{0} all-reduce(%x), replica_groups={{0,1,2,3}}, to_apply=%add', ((0, 1, 2, 3),)),
    ('%a = f32[8]{0} all-reduce(%x), replica_groups={}, to_apply=%add', ()),
    ('%g = f32[8]{0} all-gather(%x), replica_groups=[2,4]<=[8], dimensions={0}',
     ((0, 1, 2, 3), (4, 5, 6, 7))),
    ('%g = f32[8]{0} all-gather(%x), replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}',
     ((0, 4), (1, 5), (2, 6), (3, 7))),
    # jax's CPU output: mesh (4,1,2) of ids iota(8).reshape(2,4).T, grouped over axis_0
    ("%g = f32[64,32]{1,0} all-gather(%p), channel_id=1, replica_groups=mesh['axis_0'=4,"
     "'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, dimensions={0}",
     ((0, 1, 2, 3), (4, 5, 6, 7))),
    ("%r = f32[32]{0} all-reduce(%d), replica_groups=mesh['a'=2,'b'=4] {'a'}, to_apply=%add",
     ((0, 4), (1, 5), (2, 6), (3, 7))),
    ('%p = f32[8]{0} collective-permute(%x), channel_id=2, source_target_pairs={{0,4},{4,0}}',
     ((0, 4), (4, 0))),
])
def test_replica_group_spellings(line, groups):
  assert dcn.parse_groups(line) == groups


HLO = '''
ENTRY %main {
  %ar = f32[1024]{0} all-reduce(%x), channel_id=1, replica_groups={{0,4},{1,5},{2,6},{3,7}}, use_global_device_ids=true, to_apply=%add
  %ici = f32[1024]{0} all-reduce(%x), channel_id=2, replica_groups=[2,4]<=[8], use_global_device_ids=true, to_apply=%add
  %all = (bf16[256]{0}, bf16[256]{0}) all-reduce-start(%y, %z), channel_id=3, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %done = (bf16[256]{0}, bf16[256]{0}) all-reduce-done(%all)
  %rs = f32[128]{0} reduce-scatter(%w), channel_id=4, replica_groups=[1,8]<=[8], dimensions={0}, to_apply=%add
  %ag = (f32[16]{0}, f32[128]{0}) all-gather-start(%v), channel_id=5, replica_groups=[1,8]<=[8], dimensions={0}
  %a2a = f32[64]{0} all-to-all(%u), channel_id=6, replica_groups={{0,1,4,5},{2,3,6,7}}, dimensions={0}
  %cp = (f32[10]{0}, f32[10]{0}, u32[], u32[]) collective-permute-start(%t), channel_id=7, source_target_pairs={{0,4},{4,0},{1,2}}
  ROOT %out = f32[] add(%a, %b)
}
'''


def test_bytes_per_slice_worked_by_hand():
  ops = dcn.collectives(HLO)
  assert [op.kind for op in ops] == ['all-reduce', 'all-reduce', 'all-reduce', 'reduce-scatter',
                                     'all-gather', 'all-to-all', 'collective-permute']
  assert [op.bytes for op in ops] == [4096, 4096, 1024, 4096, 512, 256, 40]
  sent = [dict(dcn.slice_bytes(op, TWO_OF_FOUR, 8)) for op in ops]
  # 4 pairs across the slices, k=2: 2 (1/2) 4096 each, 4 of them touch each slice
  assert sent[0] == {0: 4 * 4096, 1: 4 * 4096}
  assert sent[1] == {}                   # each group inside one slice: ICI only
  assert sent[2] == {0: 1024, 1: 1024}   # one group of 8 over 2 slices: 2 (1/2) 1024
  assert sent[3] == {0: 2048, 1: 2048}   # reduce-scatter of 128 x 8 f32: (1/2) 4096
  assert sent[4] == {0: 256, 1: 256}     # all-gather to 128 f32: (1/2) 512
  assert sent[5] == {0: 2 * 256, 1: 2 * 256}  # groups of 4, 2 per slice: 2 * 2 * (2/4) 256
  assert sent[6] == {0: 40, 1: 40}       # 0->4 and 4->0 cross; 1->2 stays in slice 0
  r = dcn.dcn_report(HLO, TWO_OF_FOUR)
  assert r['bytes_per_slice'] == 4 * 4096 + 1024 + 2048 + 256 + 512 + 40
  assert r['by_kind'] == {'all-gather': [1, 256], 'all-reduce': [2, 4 * 4096 + 1024],
                          'all-to-all': [1, 512], 'collective-permute': [1, 40],
                          'reduce-scatter': [1, 2048]}
  assert dcn.dcn_report(HLO, [0] * 8)['bytes_per_slice'] == 0  # one slice: nothing


# libtpu's multi-slice program (lines shortened from a real v5e compile): ICI collectives
# over one slice's ids, DCN transfers as megascale host sends.
MEGASCALE = '''
  %ag = bf16[32,64]{0,1:T(8,128)(2,1)} all-gather(%p), channel_id=41, replica_groups={{0,1},{2,3}}, dimensions={1}, use_global_device_ids=true
  %send.2 = (bf16[4,8,128]{2,1,0:T(8,128)(2,1)}, u32[], token[]) send(%g, %after-all.2), channel_id=6, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_host_transfer_rendezvous="all-reduce.242_0",_xla_megascale_reduce_operation="SUM",_xla_megascale_target="{1,2}x{0:3}",_xla_megascale_transfer_type="ALL_REDUCE"}
  %recv.2 = (bf16[4,8,128]{2,1,0:T(8,128)(2,1)}, u32[], token[]) recv(%after-all.2), channel_id=7, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_megascale_target="{1,2}x{0:3}",_xla_megascale_transfer_type="ALL_REDUCE"}
  %send.1 = (f32[2,32,32,3]{2,1,3,0:T(8,128)}, u32[], token[]) send(%m, %after-all.1), channel_id=3, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_megascale_target={{100000->200002},{100001->200003},{100003->200001},{100002->200000},{200000->100002},{200001->100003},{200003->100001},{200002->100000}},_xla_megascale_transfer_type="ONE_TO_ONE"}
'''


def test_megascale_sends_worked_by_hand():
  sends = dcn.megascale_sends(MEGASCALE)
  # ALL_REDUCE of bf16[4,8,128] = 8192 bytes per chip, 2 slices of 4 chips: 2 (1/2) 8192 x 4
  assert sends[0] == ('all-reduce', 8192, {0: 4 * 8192, 1: 4 * 8192})
  # ONE_TO_ONE of f32[2,32,32,3] = 24576 bytes: each slice's 4 chips send to the other slice
  assert sends[1] == ('collective-permute', 24576, {0: 4 * 24576, 1: 4 * 24576})
  assert len(sends) == 2  # recv is the other end of the same transfer
  r = dcn.dcn_report(MEGASCALE, TWO_OF_FOUR)  # the all-gather's ids are slice-local: ICI
  assert r['bytes_per_slice'] == 4 * 8192 + 4 * 24576
  assert (r['collectives'], r['dcn_sends']) == (1, 2)


# Data parallel over 2 "slices" (mesh rows) x fsdp 4: the gradient of an fsdp-sharded
# weight is reduced over 'data' (across the slices), its all-gather stays in the slice.
COMPILE = textwrap.dedent('''
    import json, jax, jax.numpy as jnp, ml_collections
    from jax.sharding import NamedSharding, PartitionSpec as P
    from stvit_jax.runtime import sharding
    from stvit_jax.tools import dcn
    config = ml_collections.ConfigDict({'mesh': {'data': 2, 'fsdp': 4}})
    mesh = sharding.make_mesh(config)
    w = jax.ShapeDtypeStruct((256, 64), jnp.float32, sharding=NamedSharding(mesh, P('fsdp')))
    x = jax.ShapeDtypeStruct((16, 256), jnp.float32, sharding=NamedSharding(mesh, P(sharding.AXES)))
    loss = lambda w, x: jnp.sum(jnp.tanh(x @ w))
    step = jax.jit(jax.grad(loss), out_shardings=NamedSharding(mesh, P('fsdp')))
    hlo = step.lower(w, x).compile().as_text()
    slice_of = [i // 4 for i, d in enumerate(mesh.devices.flat)]  # row = slice
    print(json.dumps(dcn.dcn_report(hlo, slice_of)))
''')


@pytest.mark.slow
def test_real_compile_on_two_fake_slices():
  import json  # pylint: disable=g-import-not-at-top
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT}
  out = subprocess.run([sys.executable, '-c', COMPILE], env=env, cwd=ROOT, text=True,
                       capture_output=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r['collectives'] >= 2 and set(r['by_kind']) <= {'all-reduce', 'reduce-scatter'}, r
  # The weight's gradient, 256 x 64 f32 = 64 KiB, is summed across the 2 slices: each
  # sends 2 (1/2) x the bytes it holds of it. However XLA splits it (a full all-reduce,
  # or a reduce-scatter over fsdp first), that is at least its shard per chip
  # (16 KiB x 4 chips) and at most the whole gradient per chip.
  assert 4 * 16 * 1024 <= r['bytes_per_slice'] <= 4 * 64 * 1024, r
