"""Slot-access statistics: how often each value row is read in a batch.

Sparse Memory Finetuning (Lin et al. 2025, sec. 4) ranks slots by the term frequency

    c(i) = number of (token, head) pairs, over the non-padding tokens of the batch,
           whose top-k contains slot i,

so padding positions must not count. A layer built with `record_access=True` sows a
`SlotAccess` record on every call; collect it with `nnx.capture(..., SlotAccess)`.
"""
import chex
import jax
import jax.numpy as jnp
from flax import nnx


class SlotAccess(nnx.Intermediate):
  """Sown by `ProductKeyMemory(record_access=True)` on each call, under two names:

  - `counts`: [N] int32 c(i) above, summed over the layer's calls;
  - `indices`: a tuple with one [batch, seq, heads, k] int32 array of selected slots per call.
  """


def slot_access_counts(indices: jax.Array, num_slots: int,
                       mask: jax.Array | None = None) -> jax.Array:
  """c(i): reads of each slot over all tokens and heads, padding (mask == 0) excluded.

  Args:
    indices: [batch, seq, heads, k] slot ids in [0, num_slots).
    num_slots: N.
    mask: optional [batch, seq]; nonzero/True marks real tokens.
  Returns:
    [num_slots] int32 counts (a segment sum of ones over the selected indices).
  """
  chex.assert_rank(indices, 4)
  if mask is None:
    ones = jnp.ones(indices.shape, jnp.int32)
  else:
    chex.assert_shape(mask, indices.shape[:2])
    ones = jnp.broadcast_to((mask != 0).astype(jnp.int32)[:, :, None, None], indices.shape)
  return jax.ops.segment_sum(ones.reshape(-1), indices.reshape(-1), num_segments=num_slots)
