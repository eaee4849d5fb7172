"""Causal depthwise short convolution with a streaming cache.

y_t = sum_{j=0}^{w-1} K_j * x_{t-w+1+j}  (elementwise per channel; Titans §4.4 puts one after
each of the q/k/v projections, as Mamba and TTT do). Positions before the first token read
the cache: the last w-1 inputs of the previous call (zeros at the start of a sequence), so
running a sequence in pieces with the cache carried gives the same outputs as one call.

Padding: inputs at positions where `mask` is 0 are zeroed before the convolution and are
skipped when the cache is refreshed (the new cache holds the last w-1 inputs with mask 1,
older cache entries filling in when a call has fewer than w-1 of them). With trailing padding
this makes the padded tokens invisible to everything that follows.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from hope.layers import param


class ShortConv(nnx.Module):
  """Maps x [batch, seq, *channels] and a cache [batch, width-1, *channels] to (y, new cache)."""

  def __init__(self, channels: tuple[int, ...], width: int, axes: tuple[str | None, ...], *,
               rngs: nnx.Rngs):
    if width < 1:
      raise ValueError(f"conv_width must be >= 1, got {width}")
    std = 1.0 / math.sqrt(width)
    init = lambda key, shape, dt: std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dt)
    self.kernel = param(rngs, init, (width,) + tuple(channels), (None,) + tuple(axes))
    self.width = width

  def empty_cache(self, batch_size: int) -> jax.Array:
    """Zeros [batch, width-1, *channels]: the state before a sequence's first token."""
    return jnp.zeros((batch_size, self.width - 1) + self.kernel.shape[1:], jnp.float32)

  def __call__(self, x: jax.Array, cache: jax.Array,
               mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [batch, seq, *channels], cache [batch, width-1, *channels], mask [batch, seq] (bool)."""
    expand = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
    x = jnp.where(mask[expand], x, 0).astype(jnp.float32)
    history = jnp.concatenate([cache, x], axis=1)
    seq = x.shape[1]
    kernel = self.kernel[...]
    y = sum(kernel[j] * history[:, j:j + seq] for j in range(self.width))
    keep = jnp.concatenate([jnp.ones(cache.shape[:2], bool), mask], axis=1)
    return y, last_kept(history, keep, self.width - 1)


def last_kept(history: jax.Array, keep: jax.Array, count: int) -> jax.Array:
  """The last `count` entries of history [batch, n, ...] along axis 1 whose keep [batch, n] is set.

  Entries keep their order (oldest first). The caller guarantees at least `count` kept
  entries per row (the old cache is always kept).
  """
  from_end = jnp.cumsum(keep[:, ::-1].astype(jnp.int32), axis=1)[:, ::-1]  # 1 = last kept
  slot = count - from_end                                                   # 0 .. count-1
  hits = keep[:, None, :] & (slot[:, None, :] == jnp.arange(count)[None, :, None])
  index = jnp.argmax(hits, axis=-1)                                         # [batch, count]
  index = index.reshape(index.shape + (1,) * (history.ndim - 2))
  return jnp.take_along_axis(history, index, axis=1)
