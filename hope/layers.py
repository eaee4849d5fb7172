"""Basic layers whose parameters carry logical axis names.

Every parameter is an `nnx.Param` whose `out_sharding` metadata names its logical axes
(`embed`, `mlp`, `heads`, `head_dim`, `vocab`, ...). A rules table in the experiment config
maps logical names to mesh axes, so one model file serves data, FSDP and tensor
parallelism. `eager_sharding=False` keeps the names as metadata only: modules can be built
with or without a mesh, and the runtime places parameters.
"""
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Sequence[str | None]) -> nnx.Param:
  """A float32 parameter initialised by `init(key, shape)` with logical axis names `axes`."""
  if len(shape) != len(axes):
    raise ValueError(f"parameter of shape {tuple(shape)} needs {len(shape)} axis names, got {axes}")
  value = init(rngs.params(), tuple(shape), jnp.float32)
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class Dense(nnx.Module):
  """y = einsum(x, W): a linear map from `in_shape` trailing dims to `out_shape` dims.

  `in_axes`/`out_axes` are the logical names of the kernel's input and output dims, e.g. a
  query projection is Dense((d,), (heads, head_dim), ('embed',), ('heads', 'head_dim')).
  Fan-in scaled normal init (LeCun), no bias (as in modern decoder LMs).
  """

  def __init__(self, in_shape, out_shape, in_axes, out_axes, *, rngs: nnx.Rngs,
               dtype=jnp.float32, init_scale: float = 1.0):
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    fan_in = math.prod(in_shape)
    std = init_scale / fan_in ** 0.5
    init = lambda key, shape, dt: std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dt)
    self.kernel = param(rngs, init, in_shape + out_shape, tuple(in_axes) + tuple(out_axes))
    self.n_in = len(in_shape)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    # One 2-D matmul over the flattened leading dims: with x [batch, seq, ...] kept 3-D,
    # XLA's CPU backend writes the kernel gradient's [tokens, out] operand transposed.
    kernel = self.kernel[...].astype(self.dtype)
    in_shape, out_shape = kernel.shape[:self.n_in], kernel.shape[self.n_in:]
    lead = x.shape[:x.ndim - self.n_in]
    y = x.astype(self.dtype).reshape(-1, math.prod(in_shape)) @ kernel.reshape(
        math.prod(in_shape), math.prod(out_shape))
    return y.reshape(lead + out_shape)


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale (Zhang & Sennrich 2019), statistics in float32."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, axis_name: str = "embed", eps: float = 1e-6):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), (axis_name,))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


class Embed(nnx.Module):
  """Token embedding table of shape [vocab, embed]; `attend` gives logits for tied output."""

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.table = param(rngs, nnx.initializers.normal(1.0), (vocab_size, dim), ("vocab", "embed"))
    self.dtype = dtype

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return jnp.take(self.table[...], tokens, axis=0).astype(self.dtype)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / sqrt(|x|^2 + eps) over the last axis."""
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def silu_grad(z: jax.Array) -> jax.Array:
  """d silu(z) / dz = s (1 + z (1 - s)), s = sigmoid(z)."""
  s = jax.nn.sigmoid(z)
  return s * (1 + z * (1 - s))


def first_nonfinite(named) -> tuple[str, np.ndarray] | None:
  """The first (name, value on the host) of `named` [(name, array)] that holds a NaN or an
  infinity, or None. For the in-context states' checks (call outside jit)."""
  for name, value in named:
    value = np.asarray(value)
    if not np.isfinite(value).all():
      return name, value
  return None
