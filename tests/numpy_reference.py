"""Helpers of the independent numpy (float64) reference tests (test_windows.py,
test_stvit_r_reference.py): randomised parameters read out of a JAX module, one
jitted call of the module, and the float64 building blocks the references use."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy.special import erf


def _name(key):
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def randomize(module, seed):
  """Replaces every Param (layer scales included) with values that matter."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = [n for n in map(_name, path) if n != 'value'][-1]
    shape = leaf.shape
    if name == 'kernel':
      value = rng.normal(size=shape) / math.sqrt(shape[0])
    elif name == 'scale':
      value = 1.0 + 0.3 * rng.normal(size=shape)
    elif name.startswith('layer_scale'):
      value = rng.uniform(0.3, 1.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    elif name == 'relative_position_bias_table':
      value = rng.normal(size=shape)
    else:
      value = 0.3 * rng.normal(size=shape)
    return jnp.asarray(value, leaf.dtype)

  nnx.update(module, jax.tree_util.tree_map_with_path(draw, nnx.state(module, nnx.Param)))


def params(module):
  """{'blocks.1.attn.q.kernel': float64 array, ...}; kernels are (in, out)."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(module, nnx.Param)):
    names = [n for n in map(_name, path) if n != 'value']
    out['.'.join(names)] = np.asarray(leaf, np.float64)
  return out


def apply(module, *args, **kwargs):
  """`module(*args, **kwargs)` under one jax.jit; also returns a fresh aux dict
  when the module takes one."""
  graphdef, state = nnx.split(module)

  @jax.jit
  def run(state, *args):
    m = nnx.merge(graphdef, state)
    if kwargs.get('aux') is not None:
      aux = {}
      return m(*args, **{**kwargs, 'aux': aux}), aux
    return m(*args, **kwargs)

  return run(state, *args)


def ln(x, p, name, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p[name + '.scale'] + p[name + '.bias']


def dense(x, p, name):
  y = x @ p[name + '.kernel']
  return y + p[name + '.bias'] if name + '.bias' in p else y


def gelu(x):
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def heads_of(t, heads):
  """(B, N, C) -> (B, heads, N, d): channel h*d + j belongs to head h."""
  b, n, c = t.shape
  return t.reshape(b, n, heads, c // heads).transpose(0, 2, 1, 3)
