"""Causal multi-head self-attention with rotary positions and an optional sliding window.

softmax(q k^T / sqrt(d_h) + causal/window mask) v per head (Vaswani et al. 2017, eq. 1);
with `window = w > 0` token t attends to tokens t-w+1..t (the sliding-window attention of
Titans' MAG/MAL variants and of the "Transformer with sliding window" baseline).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from hope.layers import Dense
from hope.rotary import apply_rotary


class CausalSelfAttention(nnx.Module):
  """Maps x [batch, seq, embed] to [batch, seq, embed]."""

  def __init__(self, dim: int, num_heads: int, head_dim: int, *, rngs: nnx.Rngs,
               window: int = 0, rope_base: float = 10_000.0, dtype=jnp.float32):
    if window < 0:
      raise ValueError(f"window must be >= 0 (0 = full causal attention), got {window}")
    proj = lambda: Dense((dim,), (num_heads, head_dim), ("embed",), ("heads", "head_dim"),
                         rngs=rngs, dtype=dtype)
    self.query, self.key, self.value = proj(), proj(), proj()
    self.out = Dense((num_heads, head_dim), (dim,), ("heads", "head_dim"), ("embed",),
                     rngs=rngs, dtype=dtype)
    self.window = window
    self.rope_base = rope_base

  def __call__(self, x: jax.Array) -> jax.Array:
    positions = jnp.arange(x.shape[1])
    q = apply_rotary(self.query(x), positions, self.rope_base)
    k = apply_rotary(self.key(x), positions, self.rope_base)
    v = self.value(x)
    window = (self.window - 1, 0) if self.window else None
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window)
    return self.out(y)

  def attend(self, x_q: jax.Array, x_kv: jax.Array, q_positions: jax.Array,
             kv_positions: jax.Array, mask: jax.Array) -> jax.Array:
    """Attention of queries x_q [b, t, d] over x_kv [b, s, d] under a boolean mask [t, s].

    For layouts the causal fast path does not cover: a persistent-memory prefix visible to
    every query, Titans MAC's [persistent | retrieved | segment] context.
    """
    q = apply_rotary(self.query(x_q), q_positions, self.rope_base)
    k = apply_rotary(self.key(x_kv), kv_positions, self.rope_base)
    y = jax.nn.dot_product_attention(q, k, self.value(x_kv), mask=mask[None, None])
    return self.out(y)

  def flops_per_token(self, seq_len: int) -> float:
    """Forward matmul FLOPs per token: projections plus causal scores and values."""
    heads, head_dim = self.query.kernel.shape[1:]
    dim = self.query.kernel.shape[0]
    projections = 2 * 4 * dim * heads * head_dim
    context = mean_attended_positions(seq_len, self.window)
    return projections + 2 * 2 * context * heads * head_dim


def mean_attended_positions(seq_len: int, window: int) -> float:
  """Average over t = 1..seq_len of min(t, window): keys per query under the causal mask."""
  if not window or window >= seq_len:
    return (seq_len + 1) / 2
  return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len
