"""Blocks shared by every model family (docs/models.md section 1).

Conventions: tokens are (B, N, C), grids (B, H, W, C). Parameters are float32;
matmuls run in `dtype` (the compute dtype); LayerNorm, softmax and the residual
stream stay float32 so that LayerScale updates of 1e-5 survive bfloat16.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stvit_jax.models import execution

# timm / official init: trunc-normal(0.02) weights, zero biases.
dense_init = nnx.initializers.truncated_normal(stddev=0.02)


def linear(cin, cout, *, dtype, rngs, use_bias=True):
  return nnx.Linear(cin, cout, use_bias=use_bias, dtype=dtype,
                    kernel_init=dense_init, rngs=rngs)


class BatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm (same parameters and statistics) whose training statistics may come
  from groups of the batch: with `stat_groups` G > 1 (`execution.batch_norm_groups`),
  the batch's rows form G equal consecutive groups, each normalised by its own mean and
  variance, and the running statistics move toward the groups' average (timm's
  `distribute_bn` averaging of per-replica statistics). The trainer makes the groups the
  slices of a multi-slice mesh, whose rows are consecutive: the statistics' all-reduces
  (forward and backward) stay inside a slice; only the running statistics' update, C
  numbers per layer that nothing later in the step reads, averages across slices.
  G = 1 is nnx.BatchNorm itself."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.stat_groups = 1

  def __call__(self, x, use_running_average=None, *, mask=None):
    g = self.stat_groups
    if g == 1 or use_running_average is not False or mask is not None:
      return super().__call__(x, use_running_average, mask=mask)
    if self.axis not in (-1, x.ndim - 1) or self.axis_name is not None:
      raise ValueError('grouped BatchNorm statistics need axis=-1 and no axis_name')
    if x.shape[0] % g:
      raise ValueError(f'a batch of {x.shape[0]} does not split into {g} BatchNorm groups')
    dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
    xs = x.astype(dtype).reshape(g, x.shape[0] // g, *x.shape[1:])
    axes = tuple(range(1, xs.ndim - 1))
    mean = xs.mean(axes, keepdims=True)  # (g, 1, ..., C): E[x^2] - E[x]^2, as flax
    var = jnp.maximum(0.0, jnp.square(xs).mean(axes, keepdims=True) - jnp.square(mean))
    mul = jax.lax.rsqrt(var + self.epsilon)
    if self.scale is not None:
      mul = mul * self.scale[...].astype(dtype)
    y = (xs - mean) * mul
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    m, c = self.momentum, x.shape[-1]
    for stat, batch in ((self.mean, mean), (self.var, var)):
      stat[...] = jax.lax.stop_gradient(m * stat[...] + (1 - m) * batch.reshape(g, c).mean(0))
    return y.reshape(x.shape).astype(self.dtype or jnp.result_type(x, self.scale, self.bias))


def layer_norm(dim, *, eps, rngs):
  # Two-pass variance: PyTorch's LayerNorm does not use E[x^2] - E[x]^2.
  return nnx.LayerNorm(dim, epsilon=eps, dtype=jnp.float32,
                       use_fast_variance=False, rngs=rngs)


def gelu(x):
  return jax.nn.gelu(x, approximate=False)  # PyTorch nn.GELU() is the erf form.


def attention(q, k, v, bias=None, impl='explicit'):
  """Scaled dot-product attention on (B, N, h, d) tensors.

  Returns the output (B, Nq, h, d) and the weights (B, h, Nq, Nk). `bias` is
  added to the logits (broadcast to (B, h, Nq, Nk)); softmax runs in float32.
  impl='fused' (models.execution) uses `jax.nn.dot_product_attention` and returns
  None for the weights.
  """
  if impl == 'fused':
    if bias is not None:
      bias = jnp.asarray(bias, jnp.float32)
    return jax.nn.dot_product_attention(q, k, v, bias=bias), None
  # Heads first, explicitly: the two batched matmuls then run on contiguous
  # (B, h) slabs. Left to itself, XLA:CPU fuses the (B, N, h, d)-strided einsums,
  # the softmax and both matmuls into one kernel that reaches about half the
  # matmul throughput (deit_small: attention 21% -> 11% of CPU time, see
  # `python -m stvit_jax.tools.benchmark`). Unused weights are dropped by XLA.
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  q, k, v = (jnp.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))
  logits = jnp.einsum('bhqd,bhkd->bhqk', q, k).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum('bhqk,bhkd->bhqd', weights.astype(v.dtype), v)
  return jnp.transpose(out, (0, 2, 1, 3)), weights


class Mlp(nnx.Module):
  """Linear(C, hC) -> GELU -> Linear(hC, C)."""

  def __init__(self, dim, hidden, *, dtype, rngs, drop=0.0):
    self.fc1 = linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = linear(hidden, dim, dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(drop, rngs=rngs)

  def __call__(self, x, *, train):
    x = self.drop(gelu(self.fc1(x)), deterministic=not train)
    return self.drop(self.fc2(x), deterministic=not train)


class DropPath(nnx.Module):
  """Stochastic depth: drops the whole residual branch per sample.

  A layer scan (models.execution, scan_layers) runs same-shaped blocks through one
  traced body: `rate` is then that block's traced float32 rate, so the code below
  decides on the stream's presence (rate > 0 at construction), not on the value,
  and computes in float32 either way (the same numbers scanned or not).
  """
  per_block_data = ('rate',)  # numbers a layer scan feeds as data (models.execution)

  def __init__(self, rate, *, rngs):
    self.rate = float(rate)
    self.rngs = rngs['dropout'].fork() if self.rate > 0 else nnx.data(None)

  def __call__(self, x, *, train):
    if not train or self.rngs is None:
      return x
    keep = 1.0 - jnp.asarray(self.rate, jnp.float32)
    mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class Attention(nnx.Module):
  """Self-attention with the fused qkv Linear of timm / Swin checkpoints."""

  def __init__(self, dim, num_heads, *, dtype, rngs, qkv_bias=True):
    self.num_heads = num_heads
    self.attention_impl = 'explicit'  # models.execution.configure
    self.qkv = linear(dim, 3 * dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.proj = linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x, bias=None):
    b, n, c = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, n, 3, self.num_heads, -1), 3, axis=2)
    out, weights = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], bias, self.attention_impl)
    return self.proj(out.reshape(b, n, c)), weights


class CrossAttention(nnx.Module):
  """Spec's `Attn(q_in, kv_in)`: separate q and kv Linears (official STViT)."""

  def __init__(self, dim, num_heads, *, dtype, rngs, qkv_bias=True):
    self.num_heads = num_heads
    self.attention_impl = 'explicit'  # models.execution.configure
    self.q = linear(dim, dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.kv = linear(dim, 2 * dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.proj = linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x, y):
    b, n, c = x.shape
    q = self.q(x).reshape(b, n, self.num_heads, -1)
    kv = self.kv(y).reshape(b, y.shape[1], 2, self.num_heads, -1)
    out, weights = attention(q, kv[:, :, 0], kv[:, :, 1], impl=self.attention_impl)
    return self.proj(out.reshape(b, n, c)), weights


class Block(nnx.Module):
  """Pre-norm ViT block with fused qkv (timm `Block`): the DeiT layers."""

  def __init__(self, dim, num_heads, *, mlp_ratio=4.0, drop_path=0.0, eps=1e-6,
               dtype, rngs):
    self.norm1 = layer_norm(dim, eps=eps, rngs=rngs)
    self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
    self.norm2 = layer_norm(dim, eps=eps, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.drop_path = DropPath(drop_path, rngs=rngs)
    self.remat_policy = 'none'  # models.execution.configure

  @execution.rematerialised
  def __call__(self, x, *, train):
    a, _ = self.attn(self.norm1(x))
    x = x + self.drop_path(a, train=train)
    return x + self.drop_path(self.mlp(self.norm2(x), train=train), train=train)


def layer_scale(dim, init):
  """Per-channel residual scale (`layer_scale_*`); a `None` init means none."""
  return None if init is None else nnx.Param(jnp.full((dim,), init, jnp.float32))


def scaled(gamma, x):
  return x if gamma is None else x * gamma


class SBlock(nnx.Module):
  """The official STViT `Block`: pre-norm cross attention with LayerScale.

  `SBlock(x, y)`: x queries LN1(y) (y = x for self-attention); the same LN1
  normalises both. With `local_window=w` the tokens form a square grid and
  self-attention runs inside w x w windows.
  """

  def __init__(self, dim, num_heads, *, mlp_ratio=4.0, drop_path=0.0,
               layer_scale_init=1e-5, local_window=None, eps=1e-6, dtype, rngs):
    self.local_window = local_window
    self.layer_scale_1 = layer_scale(dim, layer_scale_init)
    self.layer_scale_2 = layer_scale(dim, layer_scale_init)
    self.norm1 = layer_norm(dim, eps=eps, rngs=rngs)
    self.attn = CrossAttention(dim, num_heads, dtype=dtype, rngs=rngs)
    self.norm2 = layer_norm(dim, eps=eps, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.drop_path = DropPath(drop_path, rngs=rngs)
    self.remat_policy = 'none'  # models.execution.configure

  @execution.rematerialised
  def __call__(self, x, y=None, *, train):
    """Returns the updated x and the attention weights (B, h, Nx, Ny)."""
    if self.local_window is not None:
      if y is not None:
        raise ValueError('a local SBlock does self-attention only; got a separate y')
      a, weights = self._local_attention(self.norm1(x))
    else:
      xn = self.norm1(x)
      a, weights = self.attn(xn, xn if y is None else self.norm1(y))
    x = x + self.drop_path(scaled(self.layer_scale_1, a), train=train)
    mlp = self.mlp(self.norm2(x), train=train)
    return x + self.drop_path(scaled(self.layer_scale_2, mlp), train=train), weights

  def _local_attention(self, x):
    b, n, c = x.shape
    side, w = square_side(n, 'local SBlock tokens'), self.local_window
    if side % w:
      raise ValueError(f'local_window={w} must divide the {side}x{side} token grid')
    windows = window_partition(x.reshape(b, side, side, c), w)
    a, weights = self.attn(windows, windows)
    a = window_reverse(a.reshape(-1, w, w, c), w, side, side).reshape(b, n, c)
    return a, None if weights is None else weights.reshape(b, -1, *weights.shape[1:])


def square_side(n, what):
  side = int(round(n ** 0.5))
  if side * side != n:
    raise ValueError(f'{what}: {n} is not a square number of tokens')
  return side


def window_partition(x, w):
  """(B, H, W, C) -> (B * H/w * W/w, w*w, C), windows in raster order."""
  b, h, wd, c = x.shape
  x = x.reshape(b, h // w, w, wd // w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, w * w, c)


def window_reverse(windows, w, h, wd):
  """Inverse of `window_partition`: (B*nW, w, w, C) or (B*nW, w*w, C) -> (B, H, W, C)."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // w, wd // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, h, wd, c)


def adaptive_pool_bins(n, k):
  """PyTorch adaptive pooling bins: bin i covers floor(i*n/k) .. ceil((i+1)*n/k)-1."""
  return [(i * n // k, -(-(i + 1) * n // k)) for i in range(k)]


def adaptive_pool(x, k, kind):
  """Adaptive avg/max pooling of a (B, H, W, C) grid to (B, k, k, C), PyTorch bins.

  Bins overlap when k does not divide the grid, so a reshape-and-reduce would
  be wrong; the bins are static, so this unrolls into k*k small reductions.
  """
  reduce = {'avg': jnp.mean, 'max': jnp.max}.get(kind)
  if reduce is None:
    raise ValueError(f"pooling kind {kind!r} is not one of 'avg', 'max'")
  rows = adaptive_pool_bins(x.shape[1], k)
  cols = adaptive_pool_bins(x.shape[2], k)
  out = [[reduce(x[:, r0:r1, c0:c1], axis=(1, 2)) for c0, c1 in cols] for r0, r1 in rows]
  return jnp.stack([jnp.stack(r, axis=1) for r in out], axis=1)


def depthwise_conv(conv, x):
  """`conv` (an `nnx.Conv` with feature_group_count == channels, stride 1, odd
  kernel, 'SAME'-size padding) applied to (B, H, W, C) as a sum of shifted products.

  Same parameters and result as `conv(x)` (summation order differs: ~1e-7
  relative). XLA:CPU lowers a grouped convolution to a generic loop that runs
  about 7x slower than these fused elementwise products (one WeightedPool
  DWConv was ~10% of stvit_deit_small's forward time on CPU).
  """
  kh, kw = conv.kernel_size
  ph, pw = kh // 2, kw // 2
  b, h, w, c = x.shape
  kernel = conv.kernel[...].astype(conv.dtype or x.dtype)  # (kh, kw, 1, C)
  xp = jnp.pad(x.astype(kernel.dtype), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  out = sum(xp[:, i:i + h, j:j + w] * kernel[i, j, 0] for i in range(kh) for j in range(kw))
  if conv.bias is not None:
    out = out + conv.bias[...].astype(out.dtype)
  return out


def drop_path_rates(rate, depth):
  """Linearly spaced stochastic depth rates, as `torch.linspace(0, rate, depth)`."""
  return [float(r) for r in np.linspace(0.0, rate, depth)]


def check_choice(field, value, valid):
  if value not in valid:
    raise ValueError(f'{field}={value!r} is not valid; choose one of {sorted(valid)}')


def static_table(fn):
  """Caches a numpy index / mask table that is a function of ints.

  Tables are built at trace time and never stored on modules: a numpy
  attribute would become an NNX data leaf (state, checkpoints, jit inputs).
  """
  cached = functools.lru_cache(maxsize=None)(fn)

  @functools.wraps(fn)
  def table(*args):
    out = cached(*args)
    out.setflags(write=False)
    return out
  return table

