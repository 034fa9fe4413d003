"""Multiply-accumulate (MAC) counting in the STViT paper's (fvcore) convention.

Only matrix multiplies (every `dot_general`: linear layers, q@k, attn@v) and
convolutions count; norms, softmax, activations, adds and pooling count zero.
The count comes from walking the jaxpr of the traced function, so it sees
exactly the ops the model runs, at any size, without computing anything.

    python -m stvit_jax.tools.flops                       # every registered model
    python -m stvit_jax.tools.flops MODEL [MODEL ...] --image_size 224 --json macs.json
    python -m stvit_jax.tools.flops --pretrained          # models with public weights, + top-1

Video models count one clip of --num_frames frames (default 32 x 224 x 224),
GMACs per view as the Video Swin paper reports them.
"""
import functools
import json
import math

import jax
from flax import nnx
from jax.extend.core import ClosedJaxpr, Jaxpr

from stvit_jax import cli
from stvit_jax.models import registry


def _shape(v):
  return v.aval.shape


def _dot_macs(eqn) -> int:
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  lhs, rhs = _shape(eqn.invars[0]), _shape(eqn.invars[1])
  # Every lhs element (batch x contracting x lhs-free) meets every rhs-free index.
  rhs_free = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
  return math.prod(lhs) * math.prod(rhs_free)


def _conv_macs(eqn) -> int:
  dn = eqn.params['dimension_numbers']
  kernel = _shape(eqn.invars[1])
  # rhs_spec = (out-feature, in-feature, *spatial). The kernel's in-feature axis
  # already is in_channels / feature_group_count, so depthwise convs come out right;
  # strides, padding and dilation act through the output shape.
  in_per_group = kernel[dn.rhs_spec[1]]
  window = math.prod(kernel[i] for i in dn.rhs_spec[2:])
  return math.prod(_shape(eqn.outvars[0])) * window * in_per_group


def _subjaxprs(params):
  """Every Jaxpr / ClosedJaxpr in an eqn's params, also inside tuples/lists."""
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, (Jaxpr, ClosedJaxpr)):
        yield item


def _jaxpr_macs(jaxpr) -> int:
  if isinstance(jaxpr, ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_macs(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_macs(eqn)
    elif name == 'while':
      raise ValueError(
          'count_macs: found a while loop (lax.while_loop, or fori_loop with '
          'traced bounds) whose trip count is unknown at trace time; use '
          'lax.scan or fori_loop with Python int bounds instead.')
    elif name == 'cond':
      # Only one branch runs; count the most expensive one (an upper bound).
      total += max(_jaxpr_macs(b) for b in eqn.params['branches'])
    else:  # jit, remat, custom_jvp/vjp, scan, shard_map...: recurse generically.
      inner = sum(_jaxpr_macs(j) for j in _subjaxprs(eqn.params))
      if name == 'scan':
        inner *= eqn.params['length']
      elif name == 'shard_map':  # The body sees one shard; every shard runs it.
        mesh = eqn.params['mesh']
        inner *= math.prod(mesh.shape[a] for a in eqn.params['newly_manual_axes'])
      total += inner
  return total


def count_macs(fn, *args, **kwargs) -> int:
  """MACs of one call `fn(*args, **kwargs)`.

  `args` may be arrays or `jax.ShapeDtypeStruct`s and are traced; `kwargs` are
  bound as static Python values (e.g. `train=False`).
  """
  closed = jax.make_jaxpr(functools.partial(fn, **kwargs))(*args)
  return _jaxpr_macs(closed)


def count_params(model) -> int:
  """Trainable parameters: `nnx.Param` leaves only (BatchNorm stats are BatchStat)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def model_macs(model, image_size: int = 224, batch: int = 1, num_frames: int = 32) -> int:
  """MACs per image (per clip of `num_frames` frames for video models, whose family's
  `input_kind` is 'video') of `model(inputs, train=False) -> (logits, aux)`.

  Works on abstract models from `nnx.eval_shape`: nothing is computed or allocated.
  """
  if batch < 1 or image_size < 1 or num_frames < 1:
    raise ValueError(f'model_macs: batch={batch}, image_size={image_size} and '
                     f'num_frames={num_frames} must be >= 1')
  graphdef, state = nnx.split(model)
  # The input's layout (images, clips) is the model family's, from the registry.
  images = registry.example_input(model, batch, image_size, frames=num_frames)
  # Only logits are returned: aux outputs are by-products, not extra compute.
  macs = count_macs(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0], state, images)
  return macs // batch


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m stvit_jax.tools.flops', description=__doc__)
  parser.add_argument('models', nargs='*', metavar='MODEL',
                      help='registered model names (default: all)')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--num_frames', type=int, default=32,
                      help='frames per clip for video models')
  parser.add_argument('--num_classes', type=int, default=None,
                      help="default: the model's own (1000 for images, 400 for video)")
  parser.add_argument('--json', metavar='PATH', help='also write the results as JSON')
  parser.add_argument('--pretrained', action='store_true',
                      help='add the expected top-1 and the source of the public weights '
                      '(weights/catalogue.py); without MODELs, only models that have some')
  args = parser.parse_args(argv)
  from stvit_jax import models  # Lazy: the CLI is the only part that needs the registry.

  known = {}
  if args.pretrained:
    from stvit_jax.weights import catalogue  # pylint: disable=g-import-not-at-top
    known = catalogue.entries()
  names = args.models or [n for n in models.names() if not args.pretrained or n in known]
  width = max(len('model'), *map(len, names))
  extra = f'  {"top-1":>6}  weights' if args.pretrained else ''
  print(f'{"model":<{width}}  {"params":>13}  {"GMACs":>8}{extra}')
  results = {}
  for name in names:
    try:
      # eval_shape: shapes only, so full-size models cost no memory or init time.
      # Built for --image_size (position tables, windows), as at training time.
      # (a registry without options(), like the tests' stand-in, builds with defaults)
      options = getattr(models, 'options', lambda _: {})(name)
      kwargs = {} if args.num_classes is None else {'num_classes': args.num_classes}
      if 'img_size' in options:
        kwargs['img_size'] = args.image_size
      window = options.get('window_size')
      if (isinstance(window, int) and args.image_size != options.get('img_size')
          and (args.image_size // 32) % window):
        kwargs['window_size'] = args.image_size // 32  # as Swin's own 384 models: 12
      model = nnx.eval_shape(lambda: models.create(name, **kwargs, rngs=nnx.Rngs(0)))
    except ValueError as err:  # Unknown name: the registry lists the valid ones.
      raise SystemExit(str(err)) from None
    params = count_params(model)
    macs = model_macs(model, args.image_size, num_frames=args.num_frames)
    results[name] = {'params': params, 'macs': macs, 'image_size': args.image_size}
    if registry.input_kind(model) == 'video':
      results[name]['num_frames'] = args.num_frames
    extra = ''
    if args.pretrained:
      entry = known.get(name)
      top1 = f'{entry.top1:.2f}' if entry and entry.top1 is not None else '-'
      extra = f'  {top1:>6}  {entry.address if entry else "-"}'
      results[name]['pretrained'] = entry and {'top1': entry.top1, 'dataset': entry.dataset,
                                               'address': entry.address}
    print(f'{name:<{width}}  {params:>13,}  {macs / 1e9:>8.2f}{extra}', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  cli.run(main)
