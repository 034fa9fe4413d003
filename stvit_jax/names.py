"""Parameter names: one way to spell a pytree path, and one head-replacement rule.

Two spellings of the same path are in use, for two audiences, both made here:

  '/'  'blocks/0/attn/qkv/kernel'        sharding-rule regexes (config.sharding_rules)
                                          and the parameter shapes stored in checkpoints
  '.'  'params/blocks.0.attn.qkv.kernel' weight files and checkpoint conversion, whose
                                          module part reads like the PyTorch state_dict
                                          name it comes from ('blocks.0.attn.qkv.weight')

Both come from `jax.tree_util.keystr(path, simple=True, separator=...)`; a
Variable's trailing `.value` (NNX states) is not part of the name.
"""
from __future__ import annotations

import jax
from flax import nnx

COLLECTIONS = {'params': nnx.Param, 'batch_stats': nnx.BatchStat}
HEADS = ('head', 'head_dist')  # the classifier modules a class-count change may replace


def path_name(path, sep='/'):
  """A pytree key path -> 'blocks/0/attn/qkv/kernel' (sep '/') or 'blocks.0...' (sep '.')."""
  # A Variable's `.value` (live state) or its 'value' entry (the same state restored
  # from a checkpoint as plain dicts) is not part of the parameter's name.
  last = path[-1] if path else None
  if (isinstance(last, jax.tree_util.GetAttrKey) and last.name == 'value') or (
      isinstance(last, jax.tree_util.DictKey) and last.key == 'value'):
    path = path[:-1]
  return jax.tree_util.keystr(tuple(path), simple=True, separator=sep)


def flatten(tree, sep='/'):
  """{path name: leaf} of every leaf of `tree`, in tree order."""
  return {path_name(p, sep): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def map_with_names(fn, tree, sep='/'):
  """`fn(name, leaf)` over `tree`, keeping its structure."""
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_name(p, sep), x), tree)


def weight_variables(model, state=None):
  """{'params/a.0.b': nnx.Variable, 'batch_stats/...': ...} for every weight of an NNX
  model (or of `state`, {collection: nnx.State} of it, whose Variables get set)."""
  flat = {}
  for collection, kind in COLLECTIONS.items():
    sub = nnx.state(model, kind) if state is None else state[collection]
    leaves = jax.tree_util.tree_leaves_with_path(
        sub, is_leaf=lambda x: isinstance(x, nnx.Variable))
    flat.update({f'{collection}/{path_name(p, ".")}': v for p, v in leaves})
  return flat


def weight_names(model):
  """{'params/a.0.b': value, 'batch_stats/...': ...} for every weight of an NNX model."""
  return {k: v.get_value() for k, v in weight_variables(model).items()}


def head_is_replaced(name, source_shape, model_shape):
  """The one head-replacement rule (convert, weights, checkpoint `init_from`): a weight
  of a classifier head (`HEADS`) whose shape differs from the model's only in its last
  axis (the class count) is not loaded, and the model keeps its fresh initialisation.

  `name` in either spelling, with or without its collection ('params/head.kernel',
  'head/kernel'); shapes in the model's layout.
  """
  parts = name.replace('.', '/').split('/')
  if parts[0] in COLLECTIONS:
    parts = parts[1:]
  source_shape, model_shape = tuple(source_shape), tuple(model_shape)
  return (parts[0] in HEADS and source_shape != model_shape
          and len(source_shape) == len(model_shape)
          and source_shape[:-1] == model_shape[:-1])


def is_head(name):
  """Whether weight `name` (either spelling, with or without collection) is a classifier head's."""
  parts = name.replace('.', '/').split('/')
  return (parts[1] if parts[0] in COLLECTIONS and len(parts) > 1 else parts[0]) in HEADS
