"""A fixed-size reservoir buffer over a pytree of per-example arrays, jit-compatible.

Reservoir sampling (Vitter 1985, "Algorithm R"): the n-th offered example (0-based) takes
slot n while the buffer is not full; afterwards it replaces slot j, j uniform in {0..n},
when j < capacity and is dropped otherwise. After any number N >= capacity of offers every
offered example is in the buffer with probability capacity / N, whatever the order.

A whole batch is offered at once: example i of the batch is offer number seen + i, and
when two examples of one batch pick the same slot the later one wins, exactly as if they
had been offered one by one. Because slots fill in order, the first min(seen, capacity)
slots are the occupied ones.
"""
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp


class ReservoirBuffer(NamedTuple):
  items: Any        # pytree of arrays with leading dimension `capacity`
  seen: jax.Array   # int32: number of examples offered so far


def init(capacity: int, example_items) -> ReservoirBuffer:
  """An empty buffer whose slots look like `example_items` (leading dimension 1)."""
  if capacity < 1:
    raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
  items = jax.tree.map(lambda a: jnp.zeros((capacity,) + a.shape[1:], a.dtype), example_items)
  return ReservoirBuffer(items=items, seen=jnp.zeros((), jnp.int32))


def capacity(buffer: ReservoirBuffer) -> int:
  return jax.tree.leaves(buffer.items)[0].shape[0]


def size(buffer: ReservoirBuffer) -> jax.Array:
  return jnp.minimum(buffer.seen, capacity(buffer))


def add(buffer: ReservoirBuffer, items, valid, key) -> ReservoirBuffer:
  """Offers a batch (leading dimension B) to the buffer; invalid examples are skipped."""
  chex.assert_rank(valid, 1)
  chex.assert_tree_shape_prefix(items, valid.shape)
  cap = capacity(buffer)
  valid = valid.astype(bool)
  offer = buffer.seen + jnp.cumsum(valid.astype(jnp.int32)) - 1   # offer number n
  j = jax.random.randint(key, offer.shape, 0, jnp.maximum(offer, 0) + 1)
  slot = jnp.where(offer < cap, offer, jnp.where(j < cap, j, cap))
  slot = jnp.where(valid, slot, cap)
  # A later example of the same batch that picks the same slot overwrites this one.
  b = slot.shape[0]
  later = jnp.arange(b)[None, :] > jnp.arange(b)[:, None]
  overwritten = jnp.any(later & (slot[None, :] == slot[:, None]), axis=1)
  slot = jnp.where(overwritten, cap, slot)
  new_items = jax.tree.map(lambda store, new: store.at[slot].set(new, mode="drop"),
                           buffer.items, items)
  return ReservoirBuffer(items=new_items, seen=buffer.seen + valid.sum(dtype=jnp.int32))


def sample(buffer: ReservoirBuffer, n: int, key):
  """n examples drawn uniformly (with replacement) from the occupied slots.

  Returns (items, valid): `valid` is all False while the buffer is empty.
  """
  filled = size(buffer)
  index = jax.random.randint(key, (n,), 0, jnp.maximum(filled, 1))
  items = jax.tree.map(lambda store: store[index], buffer.items)
  return items, jnp.broadcast_to(filled > 0, (n,))
