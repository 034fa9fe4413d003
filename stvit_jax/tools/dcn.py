"""The bytes a compiled step moves over the data-center network (DCN) between slices.

Reads the optimized HLO text of a compiled SPMD program (`compiled.as_text()`): every
all-reduce, reduce-scatter, all-gather, all-to-all and collective-permute (and their
async `-start` forms), the bytes of its operand and its replica groups, in any of XLA's
three spellings:

  replica_groups={{0,1},{2,3}}                       explicit device ids
  replica_groups=[2,4]<=[4,2]T(1,0)                  iota: iota(8).reshape(4,2).T -> 2 x 4
  replica_groups=mesh['a'=2,'b'=4], device_ids=([2,4]T(1,0)) {'b'}
                                                     a mesh of device ids, grouped over 'b'

Ids are the program's logical device ids (positions in the executable's device
assignment: the mesh's devices in `mesh.devices.flat` order). A group crosses DCN when
its devices lie in more than one slice (`slice_of[id]`).

Bytes each slice sends over DCN (it receives as many), for a group of n devices spanning
k slices, with S the operand's bytes on one device (all-gather: the gathered result's,
reduce-scatter: the scattered operand's), as the bandwidth-optimal hierarchical
algorithms move them (reduce or gather over ICI inside the slice first, then a ring of the
k slices over DCN: what XLA's multi-slice collectives do):

  all-reduce          2 (k-1)/k S      reduce-scatter over the k slices + all-gather
  reduce-scatter      (k-1)/k S
  all-gather          (k-1)/k S
  all-to-all          m (n-m)/n S      the slice's m devices send their other-slice shares
  collective-permute  S per source->target pair leaving the slice

summed over the op's groups that touch the slice. A collective inside a loop body is
counted once, not per trip (as XLA's FLOP count).

libtpu compiles a multi-slice program as one slice's program: its collectives' groups
hold only that slice's chips (ICI), and each DCN transfer is a host-transfer `send` to
the "megascale" runtime, run by every chip of the slice on its own shard S:

  send(...), frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",
      _xla_megascale_transfer_type="ALL_REDUCE", _xla_megascale_target="{1,2}x{0:3}"}
                                     slices {1,2} x chips 0..3: 2 (k-1)/k S per chip
  ... _xla_megascale_transfer_type="ONE_TO_ONE",
      _xla_megascale_target={{100000->200002},...}   S per pair leaving the slice

so a slice sends 2 (k-1)/k S x (its chips in the target) for an ALL_REDUCE
((k-1)/k for ALL_GATHER / REDUCE_SCATTER), S x (its pairs) for a ONE_TO_ONE: each chip's
buffer exchanged with its counterparts in the other slices, bandwidth-optimally. How the
megascale runtime itself routes a transfer over hosts is not in the HLO and not counted.
(How much of a gradient S is depends on libtpu's split of the all-reduce between ICI and
DCN: on v5e data parallel, about a quarter of DeiT-S's gradient per chip with libtpu 0.0.42.)
"""
from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np

KINDS = ('all-reduce', 'reduce-scatter', 'all-gather', 'all-to-all', 'collective-permute')
DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1, 's16': 2, 'u16': 2,
               'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8,
               'f64': 8, 'c64': 8, 'c128': 16, 's4': 0.5, 'u4': 0.5}

_OP = re.compile(r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+(' + '|'.join(KINDS) +
                 r')(-start)?\(')
_ARRAY = re.compile(r'\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]')


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str              # one of KINDS
  bytes: float           # S: see the module docstring
  groups: tuple          # tuples of device ids; collective-permute: (source, target) pairs
  line: str = ''


def _arrays(type_text):
  """[(dtype, bytes)] of the arrays in an HLO type ('f32[4,8]{1,0}', '(bf16[2], u32[])')."""
  out = []
  for dtype, dims in _ARRAY.findall(type_text):
    if dtype in DTYPE_BYTES:
      out.append(DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d])))
  return out


def _iota(dims, perm=None):
  ids = np.arange(int(np.prod(dims))).reshape(dims)
  return ids.transpose(perm) if perm else ids


def _ints(text):
  return [int(t) for t in text.split(',') if t.strip()]


def parse_groups(line):
  """The replica groups (or source-target pairs) of one HLO instruction, as tuples of ids;
  () when it has none (one group of all devices)."""
  m = re.search(r'source_target_pairs=\{(.*?)\}\}', line)
  if m:
    return tuple(tuple(_ints(p)) for p in re.findall(r'\{([\d,\s]+)', m.group(1) + '}'))
  m = re.search(r"replica_groups=mesh\[(.*?)\](?:,\s*device_ids=\((.*?)\))?\s*\{(.*?)\}", line)
  if m:
    axes = [(a, int(s)) for a, s in re.findall(r"'?(\w+)'?=(\d+)", m.group(1))]
    names, sizes = [a for a, _ in axes], [s for _, s in axes]
    ids = _device_ids(m.group(2), int(np.prod(sizes))).reshape(sizes)
    grouped = [names.index(a) for a in re.findall(r"'?(\w+)'?", m.group(3))]
    rest = [i for i in range(len(names)) if i not in grouped]
    n = int(np.prod([sizes[i] for i in grouped]))
    return tuple(map(tuple, ids.transpose(rest + grouped).reshape(-1, n).tolist()))
  m = re.search(r'replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?', line)
  if m:
    shape = _ints(m.group(1))
    ids = _iota(_ints(m.group(2)), _ints(m.group(3)) if m.group(3) else None)
    return tuple(map(tuple, ids.reshape(shape[0], -1).tolist()))
  m = re.search(r'replica_groups=\{((?:\s*\{[\d,\s]*\},?)*)\s*\}', line)
  if m and m.group(1).strip():
    return tuple(tuple(_ints(g)) for g in re.findall(r'\{([\d,\s]*)\}', m.group(1)))
  return ()


def _device_ids(text, count):
  """device_ids=(...) of the mesh notation: an iota '[2,4]T(1,0)' / '[8]', or a list."""
  if not text:
    return np.arange(count)
  m = re.fullmatch(r'\s*\[([\d,]+)\](?:T\(([\d,]+)\))?\s*', text)
  if m:
    return _iota(_ints(m.group(1)), _ints(m.group(2)) if m.group(2) else None).reshape(-1)
  return np.asarray(_ints(text.replace('[', ',').replace(']', ',')))


def collectives(hlo_text):
  """Every collective of the HLO module's text, in program order."""
  found = []
  for line in hlo_text.splitlines():
    m = _OP.match(line)
    if not m:
      continue
    type_text, kind, start = m.groups()
    sizes = _arrays(type_text)
    if start and kind == 'all-gather':   # (operands, results): the gathered results
      sizes = sizes[len(sizes) // 2:]
    elif start and kind == 'collective-permute':  # (operand, result, u32[], u32[])
      sizes = sizes[:1]
    groups = parse_groups(line)
    total = float(sum(sizes))
    if kind == 'reduce-scatter':  # the result is one device's 1/n of the operand
      total *= len(groups[0]) if groups else 1
    found.append(Collective(kind, total, groups, line.strip()))
  return found


def slice_bytes(op, slice_of, num_devices):
  """{slice: bytes that slice sends over DCN} for one collective (module docstring)."""
  out = collections.Counter()
  if op.kind == 'collective-permute':
    for src, dst in op.groups:
      if slice_of[src] != slice_of[dst]:
        out[slice_of[src]] += op.bytes
    return out
  for group in op.groups or (tuple(range(num_devices)),):
    members = collections.Counter(slice_of[d] for d in group)
    k, n = len(members), len(group)
    if k < 2:
      continue
    for s, m in members.items():
      if op.kind == 'all-reduce':
        out[s] += 2 * (k - 1) / k * op.bytes
      elif op.kind in ('all-gather', 'reduce-scatter'):
        out[s] += (k - 1) / k * op.bytes
      else:  # all-to-all
        out[s] += m * (n - m) / n * op.bytes
  return out


MEGASCALE = {'ALL_REDUCE': 'all-reduce', 'ALL_GATHER': 'all-gather',
             'REDUCE_SCATTER': 'reduce-scatter', 'ONE_TO_ONE': 'collective-permute',
             'ALL_TO_ALL': 'all-to-all'}


def _id_set(text):
  """'1,2' / '0:3' (inclusive) / '0:3,8' -> [ids]."""
  out = []
  for part in text.split(','):
    lo, _, hi = part.strip().partition(':')
    if lo:
      out += list(range(int(lo), int(hi or lo) + 1))
  return out


def megascale_sends(hlo_text):
  """[(kind, S bytes per chip, {slice: bytes that slice sends over DCN})] for libtpu's
  DCN transfers (module docstring)."""
  found = []
  for line in hlo_text.splitlines():
    if ' send(' not in line or 'xla_megascale_runtime' not in line:
      continue
    m = re.match(r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\((.*?), u32\[\]', line)
    kind = re.search(r'_xla_megascale_transfer_type="(\w+)"', line)
    if not (m and kind):
      continue
    size = float(sum(_arrays(m.group(1))))
    kind = kind.group(1)
    sent = collections.Counter()
    pairs = re.findall(r'\{(\d+)->(\d+)\}', line)
    target = re.search(r'_xla_megascale_target="\{([\d,:]*)\}x\{([\d,:]*)\}"', line)
    if pairs:  # device ids: slice s has ids (s+1) * 100000 + chip
      for src, dst in pairs:
        if int(src) // 100000 != int(dst) // 100000:
          sent[int(src) // 100000 - 1] += size
    elif target:
      slices, chips = _id_set(target.group(1)), _id_set(target.group(2))
      k = len(slices)
      share = 2 * (k - 1) / k if kind == 'ALL_REDUCE' else (k - 1) / k
      for s in slices:
        sent[s - 1] += share * size * len(chips)
    found.append((MEGASCALE.get(kind, kind.lower()), size, sent))
  return found


def dcn_report(hlo_text, slice_of):
  """{'bytes_per_slice': the most any slice sends over DCN in one step, 'by_kind':
  {kind: [ops crossing DCN, bytes per slice]}, 'collectives': all collectives found}."""
  slice_of = list(slice_of)
  ops = collectives(hlo_text)
  per_slice = collections.Counter()
  by_kind = {}
  sends = megascale_sends(hlo_text)
  crossing = [(op.kind, slice_bytes(op, slice_of, len(slice_of))) for op in ops]
  for kind, sent in crossing + [(kind, sent) for kind, _, sent in sends]:
    if sent:
      per_slice.update(sent)
      count, total = by_kind.get(kind, (0, 0.0))
      by_kind[kind] = (count + 1, total + max(sent.values()))
  return {'bytes_per_slice': max(per_slice.values(), default=0.0),
          'by_kind': {k: list(v) for k, v in sorted(by_kind.items())},
          'collectives': len(ops), 'dcn_sends': len(sends)}
