"""Lays one sequence of a token stream out in the chunks of a chunk clock carried across calls.

Memories that change only at chunk boundaries (CMS levels, eq. 71; the self-modifying
memory's chunk-wise training, sec. 8.2) process a call's tokens chunk by chunk, and a stream
may arrive in pieces of any length. Two rules make a call over pieces equal one call over the
whole stream:

* Masked tokens are skipped as if absent: `compaction` moves the valid tokens to the front,
  in order; computation runs on that compacted sequence and `uncompact` puts outputs back
  (zero at masked positions).
* The clock `position` (tokens of the current chunk consumed by earlier calls, in
  [0, chunk)) places the boundaries: compacted token i lies in chunk step
  j = (position + i) // chunk of this call. `chunk_grid` lists for each step the tokens it
  holds, in a buffer of min(chunk, seq) slots, so a `lax.scan` over steps sees every valid
  token once and crosses a boundary exactly when the stream has consumed a multiple of
  `chunk` tokens. A call has ceil((seq + chunk - 1) / chunk) steps: at most one step more
  than the tokens need when chunk <= seq, two half-used buffers when chunk > seq. A caller
  that knows the clock is at a boundary (a fresh state, as in training) passes
  `at_boundary=True` and gets ceil(seq / chunk) steps, none of them wasted. A stream whose
  every call consumes a multiple of g tokens keeps the clock at a multiple of gcd(g, chunk);
  its calls pass `granule=g` and get ceil((seq + chunk - gcd(g, chunk)) / chunk) steps (for a
  call of g tokens, ceil(g / chunk), none wasted, when g divides chunk or chunk divides g).

Everything here is per sequence (no batch axis); callers `vmap` over the batch.
"""
import math

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Compaction:
  """Valid tokens first: `order[i]` is the token at compacted position i, `inverse[t]` the
  compacted position of token t, `count` the number of valid tokens (all int32)."""
  order: jax.Array
  inverse: jax.Array
  count: jax.Array


def compaction(mask: jax.Array) -> Compaction:
  """The stable permutation that moves the valid tokens of `mask` [seq] to the front."""
  mask = mask.astype(bool)
  count = jnp.sum(mask, dtype=jnp.int32)
  order = jnp.argsort(~mask, stable=True).astype(jnp.int32)
  inverse = jnp.where(mask, jnp.cumsum(mask) - 1, count + jnp.cumsum(~mask) - 1)
  return Compaction(order, inverse.astype(jnp.int32), count)


def _zero_where_not(valid: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - valid.ndim)), x, 0)


def compact(x: jax.Array, c: Compaction) -> jax.Array:
  """[seq, ...] -> the valid tokens in order, then zeros."""
  return _zero_where_not(jnp.arange(x.shape[0]) < c.count, x[c.order])


def uncompact(y: jax.Array, c: Compaction) -> jax.Array:
  """Inverse of `compact`: [seq, ...] in token order, zero at masked tokens."""
  return _zero_where_not(c.inverse < c.count, y[c.inverse])


@struct.dataclass
class ChunkGrid:
  """Where the compacted tokens sit in the chunk steps of one call.

  index [steps, width]: compacted token in each slot (clipped into range where empty);
  valid [steps, width]: the slot holds a valid token; complete [steps]: the step's chunk ends
  inside this call (its weights change after it); slot [seq]: flat slot (step * width + s) of
  each compacted position; next_position: the clock after this call.
  """
  index: jax.Array
  valid: jax.Array
  complete: jax.Array
  slot: jax.Array
  next_position: jax.Array


def chunk_grid(count: jax.Array, position: jax.Array, chunk: int, length: int, *,
               at_boundary: bool = False, granule: int = 1) -> ChunkGrid:
  """The grid of a call of `length` compacted positions, `count` of them valid, whose first
  token is token `position` of its chunk; `at_boundary=True` promises position == 0,
  `granule` that position is a multiple of gcd(granule, chunk)."""
  width = min(chunk, length)
  steps = -(-(length + (0 if at_boundary else chunk - math.gcd(granule, chunk))) // chunk)
  step = jnp.arange(steps)
  chunk_end = (step + 1) * chunk - position           # first compacted position after the chunk
  start = jnp.maximum(0, step * chunk - position)
  stop = jnp.minimum(chunk_end, count)
  index = start[:, None] + jnp.arange(width)
  valid = index < stop[:, None]
  compacted = jnp.arange(length)
  step_of = (position + compacted) // chunk
  slot = step_of * width + compacted - start[step_of]
  return ChunkGrid(index=jnp.minimum(index, length - 1).astype(jnp.int32), valid=valid,
                   complete=chunk_end <= count, slot=slot.astype(jnp.int32),
                   next_position=((position + count) % chunk).astype(jnp.int32))


def to_chunks(x: jax.Array, grid: ChunkGrid) -> jax.Array:
  """[seq, ...] compacted -> [steps, width, ...], zero in empty slots."""
  return _zero_where_not(grid.valid, x[grid.index])


def from_chunks(y: jax.Array, grid: ChunkGrid) -> jax.Array:
  """[steps, width, ...] -> [seq, ...] compacted (positions past `count` hold no meaning)."""
  return y.reshape((-1,) + y.shape[2:])[grid.slot]
