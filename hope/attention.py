"""Causal multi-head self-attention with rotary positions and an optional sliding window.

softmax(q k^T / sqrt(d_h) + causal/window mask) v per head (Vaswani et al. 2017, eq. 1);
with `window = w > 0` token t attends to tokens t-w+1..t (the sliding-window attention of
Titans' MAG/MAL variants and of the "Transformer with sliding window" baseline).

Full causal attention skips the masked half of the score matrix (`causal_attention`): the
sequence is cut into blocks of `block` to 2 x `block` tokens, each block attends to itself
under the causal mask, and a dyadic tree of rectangular pieces covers the rest (at level l
the odd 2^l-th parts of the sequence attend to the even parts just before them), so the
scores computed are about T^2/2 + T * block/2 instead of T^2. The pieces are merged with
their row maxima and sums, as in blockwise (flash) attention; the result equals the
masked softmax to float rounding.

Incremental decoding (`init_cache`, `decode`) keeps the rotated keys and the values of the
tokens read so far in a `KVCache` of C slots, token p in slot p mod C: C = max_len for full
attention, C = min(window, max_len) with a window, so a sliding window decodes every token
at the same cost however long the context. A call reads t new tokens at positions
length..length+t-1, writes the last min(t, C) of them and attends under the causal (and
window) mask: over the cache after the write (one token, or full attention, whose cache
evicts nothing), or, for several tokens through a window, over the cache before the write
and the new tokens.
"""
import jax
import jax.numpy as jnp
from flax import nnx, struct

from hope.layers import Dense
from hope.rotary import apply_rotary


@struct.dataclass
class KVCache:
  """keys, values [batch, C, heads, head_dim] (keys rotated); positions [C] of the token in
  each slot (-1: empty); length: tokens read so far (int32)."""
  keys: jax.Array
  values: jax.Array
  positions: jax.Array
  length: jax.Array


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
    if not self.window:
      return self.out(causal_attention(q, k, v))
    t = positions[:, None] - positions[None, :]
    return self.out(masked_attention(q, k, v, (t >= 0) & (t < self.window)))

  def init_cache(self, batch_size: int, max_len: int) -> KVCache:
    """An empty cache for a document of at most `max_len` tokens."""
    size = min(self.window, max_len) if self.window else max_len
    heads, head_dim = self.key.kernel.shape[1:]
    zeros = jnp.zeros((batch_size, size, heads, head_dim), self.key.dtype)
    return KVCache(keys=zeros, values=zeros, positions=jnp.full((size,), -1, jnp.int32),
                   length=jnp.zeros((), jnp.int32))

  def decode(self, x: jax.Array, cache: KVCache,
             prefix: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """The outputs for x [batch, t, embed], the next t tokens of the cached document (as
    `__call__` over the whole document gives them), and the cache with them written.

    `prefix` [batch, P, embed]: keys and values at positions 0..P-1 that every query sees
    (a persistent memory); the document then starts at position P, as in `attend` over
    [prefix | document] under `titans.prefix_window_mask`."""
    t, size = x.shape[1], cache.positions.shape[0]
    offset = 0 if prefix is None else prefix.shape[1]
    positions = offset + cache.length + jnp.arange(t, dtype=jnp.int32)
    q = apply_rotary(self.query(x), positions, self.rope_base)
    k = apply_rotary(self.key(x), positions, self.rope_base)
    v = self.value(x)
    kept = min(t, size)
    slots = positions[t - kept:] % size
    written = KVCache(keys=cache.keys.at[:, slots].set(k[:, t - kept:]),
                      values=cache.values.at[:, slots].set(v[:, t - kept:]),
                      positions=cache.positions.at[slots].set(positions[t - kept:]),
                      length=cache.length + t)
    if t == 1 or not self.window:  # the write evicts nothing this call reads: attend in place
      keys, values, kv_positions = written.keys, written.values, written.positions
    else:  # a window's ring may evict keys that this call's earlier queries still see
      keys = jnp.concatenate([cache.keys, k], axis=1)
      values = jnp.concatenate([cache.values, v], axis=1)
      kv_positions = jnp.concatenate([cache.positions, positions])
    gap = positions[:, None] - kv_positions[None, :]
    mask = (kv_positions >= 0)[None, :] & (gap >= 0)
    if self.window:
      mask &= gap < self.window
    if prefix is not None:
      keys = jnp.concatenate([apply_rotary(self.key(prefix), jnp.arange(offset), self.rope_base),
                              keys], axis=1)
      values = jnp.concatenate([self.value(prefix), values], axis=1)
      mask = jnp.concatenate([jnp.ones((t, offset), bool), mask], axis=1)
    return self.out(masked_attention(q, keys, values, mask)), written

  def attend(self, x_q: jax.Array, x_kv: jax.Array, q_positions: jax.Array,
             kv_positions: jax.Array, mask: jax.Array) -> jax.Array:
    """Attention of queries x_q [b, t, d] over x_kv [b, s, d] under a boolean mask [t, s].

    For layouts the causal fast path does not cover: a persistent-memory prefix visible to
    every query, Titans MAC's [persistent | retrieved | segment] context.
    """
    q = apply_rotary(self.query(x_q), q_positions, self.rope_base)
    k = apply_rotary(self.key(x_kv), kv_positions, self.rope_base)
    return self.out(masked_attention(q, k, self.value(x_kv), mask))

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


_MASKED = -1e30  # a masked score: exp(_MASKED - row max) is 0, and no inf - inf appears


def _piece(q, k, v, mask=None):
  """Unnormalised softmax attention of q [..., t, n, h] over k, v [..., s, n, h].

  Returns (o = sum_s exp(q.k_s - m) v_s [..., t, n, h], m, l = sum_s exp(q.k_s - m)
  [..., t, n]) with m the row maximum of the scores (held constant for differentiation:
  o / l does not depend on it). `mask` [t, s] (True: attend) is optional.
  """
  scores = jnp.einsum("...tnh,...snh->...nts", q, k, preferred_element_type=jnp.float32)
  if mask is not None:
    scores = jnp.where(mask, scores, _MASKED)
  m = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  e = jnp.exp(scores - m)
  o = jnp.einsum("...nts,...snh->...tnh", e.astype(v.dtype), v,
                 preferred_element_type=jnp.float32)
  return o, jnp.swapaxes(m[..., 0], -1, -2), jnp.swapaxes(jnp.sum(e, axis=-1), -1, -2)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(h) where mask, else -inf) v; q [b, t, n, h], k/v [b, s, n, h],
  mask [t, s]. A row with nothing to attend to averages v (as a uniform softmax)."""
  o, _, l = _piece(q * q.shape[-1] ** -0.5, k, v, mask)
  return (o / l[..., None]).astype(q.dtype)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, block: int = 64) -> jax.Array:
  """softmax(q k^T / sqrt(h) + causal mask) v for q, k, v [b, t, n, h], computing only the
  blocks on or below the diagonal (see the module docstring)."""
  b, t, n, h = q.shape
  dtype = q.dtype
  q = q * h ** -0.5
  levels = 0
  while t % 2 ** (levels + 1) == 0 and t // 2 ** (levels + 1) >= block:
    levels += 1
  size = t // 2 ** levels
  blocks = lambda a, parts: a.reshape(b, parts, t // parts, n, h)
  diagonal = jnp.tril(jnp.ones((size, size), bool))
  o, m, l = _piece(blocks(q, 2 ** levels), blocks(k, 2 ** levels), blocks(v, 2 ** levels),
                   diagonal)
  pieces = [(o.reshape(b, t, n, h), m.reshape(b, t, n), l.reshape(b, t, n))]
  for level in range(1, levels + 1):
    pairs = lambda a: a.reshape(b, 2 ** (level - 1), 2, t // 2 ** level, n, h)
    o, m, l = _piece(pairs(q)[:, :, 1], pairs(k)[:, :, 0], pairs(v)[:, :, 0])
    # The even parts' queries get nothing from this level: o = l = 0, m masked.
    odd = lambda x, fill: jnp.stack([jnp.full_like(x, fill), x], axis=2).reshape(
        (b, t) + x.shape[3:])
    pieces.append((odd(o, 0.0), odd(m, _MASKED), odd(l, 0.0)))
  row_max = pieces[0][1]
  for _, m, _ in pieces[1:]:
    row_max = jnp.maximum(row_max, m)
  numerator = denominator = 0.0
  for o, m, l in pieces:
    weight = jnp.exp(m - row_max)
    numerator = numerator + o * weight[..., None]
    denominator = denominator + l * weight
  return (numerator / denominator[..., None]).astype(dtype)
