"""The run's config, saved with it, and the fields a resumed run may not change.

A run saves its config as WORKDIR/config.json and in every checkpoint's
metadata. Resuming compares the checkpoint's config with the current one:
exact resume (the same batches, random numbers and updates as an
uninterrupted run) survives only changes of the fields in HARMLESS (when to
log, evaluate and save; where the data lives; the device layout, except how
BatchNorm statistics are grouped: config.mesh.dcn_data and config.mesh.batch_norm
decide which examples each BatchNorm layer's training statistics average over, so a
change of the slice count with batch_norm='slice', or of batch_norm with several
slices, changes them and is refused like the rest). Any other
change -- batch size, seed, data, augmentation, model, optimizer, schedule --
is an error naming the fields, unless `config.resume_allow_changes` lists them
('batch_size,seed', or 'all') to make the change deliberately.
"""
from __future__ import annotations

import json


# Dotted field names (or prefixes ending in '.') whose change keeps exact resume.
HARMLESS = (
    'log_every_steps', 'eval_every_epochs', 'eval_every_steps', 'eval_batch_size',
    'checkpoint_every_epochs', 'checkpoint_every_steps', 'checkpoint.', 'init_from',
    'resume_allow_changes', 'data.data_dir', 'data.eval_split', 'data.crop_pct',
    'data.cache', 'data.prefetch', 'mesh.', 'sharding_rules', 'compilation_cache_dir',
    'compilation_cache_min_compile_secs',
)


def to_dict(config):
  """The config as plain JSON values (tuples become lists), comparable after a round trip."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


# The mesh fields that change BatchNorm statistics (their groups: BN_GROUPS).
BN_FIELDS = ('mesh.dcn_data', 'mesh.batch_norm')


def _bn_groups(flat):
  """How many groups BatchNorm statistics are taken over: the slices for 'slice', one
  for 'global' (and for one slice either way)."""
  slices = flat.get('mesh.dcn_data', 1)
  return 1 if flat.get('mesh.batch_norm', 'slice') == 'global' or slices == 1 else slices


def _harmless(field):
  if field in BN_FIELDS:
    return False
  return any(field == h or (h.endswith('.') and field.startswith(h)) for h in HARMLESS)


def _added_later():
  """{field: value}: fields newer than some checkpoints, with the value that older code
  ran as. A checkpoint without the field ran as that value: resuming at it is no change."""
  from stvit_jax.models import execution  # pylint: disable=g-import-not-at-top
  return {**{f'model.{k}': v for k, v in execution.DEFAULTS.items()},
          'mesh.dcn_data': 1, 'mesh.batch_norm': 'slice'}


def changes(saved, current):
  """[(field, saved value, current value)] for the fields that break exact resume."""
  a, b = flatten(saved), flatten(current)
  missing = object()
  a = {**{k: v for k, v in _added_later().items() if k in b}, **a}
  same_bn = _bn_groups(a) == _bn_groups(b)
  return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
          if a.get(k, missing) != b.get(k, missing) and not _harmless(k)
          and not (k in BN_FIELDS and same_bn)]


def check_resume(saved, current, where):
  """(changes allowed by resume_allow_changes, None) or (all changes, a message naming
  the changed fields that are not allowed, for the caller's CheckpointError)."""
  if saved is None or current is None:  # a checkpoint written before configs were stored
    return [], None
  allow = {f.strip() for f in str(current.get('resume_allow_changes') or '').split(',')
           if f.strip()}
  found = changes(saved, current)
  blocked = [c for c in found if 'all' not in allow and c[0] not in allow]
  if blocked:
    shown = ', '.join(f'{k} {_show(old)} -> {_show(new)}' for k, old, new in blocked)
    names = ','.join(k for k, _, _ in blocked)
    return found, (
        f'resuming {where} with a changed config breaks exact resume: {shown}. Rerun with the '
        f'original values, use a new --workdir, or accept the change deliberately with '
        f'--config.resume_allow_changes={names}')
  return found, None


def _show(value):
  return '(absent)' if not isinstance(value, (str, int, float, bool, list, type(None))) else (
      json.dumps(value))
