"""Product-key memory layer (Lample et al. 2019) with the Memory+ options (Berges et al. 2024).

For a token x (the input of the FFN it replaces), per head h:

    q_h = norm(W_q,h x + b_h)                               query projection (sec. 3.1)
    I_h, w_h = product_key_search(q_h, C1_h, C2_h, k)       sec. 3.2, eqs. 1-2
    y = sum_h sum_{i in I_h} w_{h,i} V[i]                   eq. 3, heads summed

and the output is y itself (PKM, value dim = embed dim) or, with Memory+'s gated output,

    out = W2 (y * silu(W1 x)).

V lives in a `ValuePool`, which several layers may share. The query norm, when enabled, is
a per-head RMSNorm (the "qk-norm" Memory+ uses for stability).
"""
import math

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from memory_layers.access_stats import SlotAccess, slot_access_counts
from memory_layers.product_keys import SlotLookup, product_key_search
from hope.sharding import normalize_rules
from memory_layers.value_pool import ValuePool
from memory_layers.value_read import read_values, read_values_sharded


def _param(value: jax.Array, axes: tuple) -> nnx.Param:
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class ProductKeyMemory(nnx.Module):
  """A memory layer that maps x [batch, seq, embed] to [batch, seq, embed].

  Args:
    embed_dim: width of the input and output.
    values: the `ValuePool` to read (N slots, N a perfect square). Pass the same pool to
      several layers to share it.
    num_heads: query heads; their reads are summed.
    key_dim: width of each head's query, even (each half scores one sub-key table).
    top_k: slots read per head, at most sqrt(N).
    gated_output: Memory+'s out = W2 (y * silu(W1 x)); without it the value dim must
      equal embed_dim and the output is y.
    query_norm: per-head RMSNorm on the queries.
    sharding_rules: a rules table (see `hope.sharding`). When given and a
      mesh is set with `jax.set_mesh`, the value read runs sharded over that mesh
      (`read_values_sharded`); otherwise it reads on one device (`read_values`).
    record_access: sow a `SlotAccess` record (counts and indices) on every call.
  """

  def __init__(self, embed_dim: int, values: ValuePool, *, num_heads: int = 4,
               key_dim: int = 128, top_k: int = 32, gated_output: bool = False,
               query_norm: bool = False, sharding_rules=None, record_access: bool = False,
               rngs: nnx.Rngs, param_dtype=jnp.float32):
    for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads),
                        ("key_dim", key_dim), ("top_k", top_k)):
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"ProductKeyMemory {name} must be a positive integer, got {value!r}")
    if not isinstance(values, ValuePool):
      raise ValueError(f"ProductKeyMemory values must be a ValuePool, got {type(values).__name__}")
    num_slots, value_dim = values.num_slots, values.value_dim
    n = math.isqrt(num_slots)
    if n * n != num_slots:
      raise ValueError(f"values.num_slots ({num_slots}) must be a perfect square n*n: product "
                       f"keys pair two sub-key tables of n rows (e.g. {(n + 1) ** 2} = {n + 1}^2)")
    if top_k > n:
      raise ValueError(f"ProductKeyMemory top_k ({top_k}) must be at most sqrt(num_slots) = {n}, "
                       "the rows of each sub-key table")
    if key_dim % 2:
      raise ValueError(f"ProductKeyMemory key_dim ({key_dim}) must be even: each head's query "
                       "is split into two halves, one per sub-key table")
    if not gated_output and value_dim != embed_dim:
      raise ValueError(f"the ValuePool's value_dim ({value_dim}) must equal embed_dim "
                       f"({embed_dim}) unless gated_output=True projects it back")

    self.embed_dim, self.num_heads, self.key_dim, self.top_k = embed_dim, num_heads, key_dim, top_k
    self.sharding_rules = None if sharding_rules is None else normalize_rules(sharding_rules)
    self.record_access = record_access
    self.values = values
    # Row-sparse mode (memory_layers.row_sparse.value_and_grad sets a ReadTap here): the
    # table is read without gradient and the read returned through the tap.
    self.value_tap = None

    keys = iter(jax.random.split(rngs.params(), 4))
    self.query_kernel = _param(
        embed_dim ** -0.5 * jax.random.normal(next(keys), (embed_dim, num_heads, key_dim),
                                              param_dtype), ("embed", "heads", None))
    self.query_bias = _param(jnp.zeros((num_heads, key_dim), param_dtype), ("heads", None))
    self.query_scale = (_param(jnp.ones((num_heads, key_dim), param_dtype), ("heads", None))
                        if query_norm else None)
    bound = (key_dim // 2) ** -0.5
    self.sub_keys = _param(
        jax.random.uniform(next(keys), (num_heads, 2, n, key_dim // 2), param_dtype,
                           -bound, bound), ("heads", None, None, None))
    if gated_output:
      self.gate_kernel = _param(
          value_dim ** -0.5 * jax.random.normal(next(keys), (embed_dim, value_dim), param_dtype),
          ("embed", "value"))
      self.out_kernel = _param(
          embed_dim ** -0.5 * jax.random.normal(next(keys), (value_dim, embed_dim), param_dtype),
          ("value", "embed"))
    else:
      self.gate_kernel = self.out_kernel = None

  @property
  def num_slots(self) -> int:
    return self.values.num_slots

  def flops_per_token(self, seq_len: int) -> float:
    """Forward matmul FLOPs per token: query projection, sub-key scores (2 sqrt(N) half-keys
    per head), the heads * top_k weighted value rows and, when gated, W1 and W2. Top-k
    selection is not counted (no multiply-adds)."""
    del seq_len
    heads, n = self.num_heads, math.isqrt(self.num_slots)
    value_dim = self.values.value_dim
    flops = 2 * self.embed_dim * heads * self.key_dim + 2 * heads * n * self.key_dim
    flops += 2 * heads * self.top_k * value_dim
    if self.gate_kernel is not None:
      flops += 2 * 2 * self.embed_dim * value_dim
    return float(flops)

  def queries(self, x: jax.Array) -> jax.Array:
    """[batch, seq, embed] -> [batch, seq, heads, key_dim]: q_h = norm(W_q,h x + b_h)."""
    q = jnp.einsum("bse,ehd->bshd", x, self.query_kernel[...]) + self.query_bias[...]
    if self.query_scale is not None:
      q32 = q.astype(jnp.float32)
      q32 = q32 * jax.lax.rsqrt(jnp.mean(q32 * q32, axis=-1, keepdims=True) + 1e-6)
      q = (q32 * self.query_scale[...]).astype(q.dtype)
    return q

  def lookup(self, x: jax.Array) -> SlotLookup:
    """The slots and weights each token reads: [batch, seq, heads, top_k] each."""
    return product_key_search(self.queries(x), self.sub_keys[...], self.top_k)

  def read(self, lookup: SlotLookup) -> jax.Array:
    """y = sum_h sum_i w_{h,i} V[i]: [batch, seq, value_dim], sharded when configured.

    In row-sparse mode (`value_tap` set) V is read through stop_gradient and y returned
    through the tap, which adds a zero whose gradient is dL/dy (`memory_layers.row_sparse`).
    """
    table = self.values.table[...]
    tap = self.value_tap
    if tap is not None:
      table = jax.lax.stop_gradient(table)
    if self.sharding_rules is not None and not jax.sharding.get_abstract_mesh().empty:
      y = read_values_sharded(table, lookup.indices, lookup.weights, self.sharding_rules)
    else:
      y = read_values(table, lookup.indices, lookup.weights)
    return y if tap is None else tap(y, lookup)

  def project_output(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Memory+'s W2 (y * silu(W1 x)) when gated, else y."""
    if self.gate_kernel is None:
      return y
    gate = jax.nn.silu(x @ self.gate_kernel[...])
    return (y * gate) @ self.out_kernel[...]

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """[batch, seq, embed] -> [batch, seq, embed].

    `mask` ([batch, seq], nonzero = real token) only affects the recorded access counts:
    every token's output depends on that token alone.
    """
    chex.assert_rank(x, 3)
    chex.assert_axis_dimension(x, 2, self.embed_dim)
    if mask is not None:
      chex.assert_shape(mask, x.shape[:2])
    lookup = self.lookup(x)
    out = self.project_output(x, self.read(lookup))
    if self.record_access:
      self.sow(SlotAccess, "indices", lookup.indices)
      self.sow(SlotAccess, "counts", slot_access_counts(lookup.indices, self.num_slots, mask),
               init_fn=lambda: 0, reduce_fn=lambda total, counts: total + counts)
    return out
