"""The value read of a memory layer: a weighted sum of selected rows of the value table.

    m(x) = sum_h sum_{i in I_h} w_{h,i} V[i]            (Lample et al. 2019, eq. 3; heads summed)

`read_values` reads from a table on one device (or as GSPMD places it).
`read_values_sharded` computes the same numbers with the table split over a device mesh so
that no device ever holds all of it, forward or backward:

- `value` sharding (columns, as Memory+'s column-parallel EmbeddingBag, Berges et al. 2024):
  the tokens are replicated over the value axes and every device computes its slice of
  every token's output.
- `slots` sharding (rows): tokens are exchanged within the slot axes (all-gather of the
  indices and weights when those axes also shard the batch), each device reads only the
  rows it holds (the other rows contribute zero) and the partial sums are reduced back
  (reduce-scatter onto the token owners, or an all-reduce when the slot axes do not shard
  the batch).

The sharded read is a `jax.shard_map` over the current mesh (`jax.set_mesh`), so its
gradient with respect to the table is produced shard by shard, with the table's own
sharding. Plain GSPMD propagation of a gather from a row-sharded table returns a replicated
[N, value] gradient, which is what this avoids.
"""
import math

import chex
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from hope.sharding import Rules, logical_to_mesh_spec, spec_axes


def read_values(table: jax.Array, indices: jax.Array, weights: jax.Array) -> jax.Array:
  """sum over heads and selected slots of weights * table[indices].

  Args:
    table: [N, value] value rows.
    indices: [batch, seq, heads, k] integer slot ids in [0, N).
    weights: [batch, seq, heads, k] weights of those slots.
  Returns:
    [batch, seq, value].
  """
  chex.assert_rank(table, 2)
  chex.assert_rank([indices, weights], 4)
  chex.assert_equal_shape([indices, weights])
  return _add_reads(jnp.zeros((*indices.shape[:2], table.shape[1]), table.dtype), table,
                    indices, weights)


def _add_reads(total: jax.Array, table: jax.Array, indices: jax.Array,
               weights: jax.Array) -> jax.Array:
  """total + the weighted reads, as a scan over the heads * k reads of every token.

  Each step gathers one [batch, seq, value] row per token and adds it; the backward pass
  recomputes that gather (jax.checkpoint). So no [batch, seq, heads * k, value]
  intermediate is ever built (128x the output at 4 heads x top-32), and the table's
  gradient is one zero-initialised buffer that every read scatter-adds into in place.
  """
  batch, seq, heads, k = indices.shape
  reads = tuple(jnp.moveaxis(a.reshape(batch, seq, heads * k), -1, 0)
                for a in (indices, weights))

  @jax.checkpoint
  def add_read(total, read):
    slot, weight = read
    return total + weight[..., None].astype(table.dtype) * jnp.take(table, slot, axis=0), None

  total, _ = jax.lax.scan(add_read, total, reads)
  return total


def read_values_sharded(table: jax.Array, indices: jax.Array, weights: jax.Array,
                        rules: Rules) -> jax.Array:
  """`read_values` with the table sharded by `rules` over the current mesh.

  The table's dims are named ('slots', 'value'), the tokens' leading dim 'batch'. Needs a
  mesh set with `jax.set_mesh`. The value axes must not also shard the batch.
  """
  chex.assert_rank(table, 2)
  chex.assert_rank([indices, weights], 4)
  chex.assert_equal_shape([indices, weights])
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    raise ValueError("read_values_sharded needs a mesh: call it under jax.set_mesh(mesh)")
  table_spec = logical_to_mesh_spec(P("slots", "value"), rules, mesh.axis_names)
  slot_axes, value_axes = spec_axes(table_spec, 0), spec_axes(table_spec, 1)
  token_spec = logical_to_mesh_spec(P("batch"), rules, mesh.axis_names)
  batch_axes = spec_axes(token_spec, 0)
  _check_divides(table.shape[0], slot_axes, mesh, "the value table's num_slots", "slots")
  _check_divides(table.shape[1], value_axes, mesh, "the value table's value_dim", "value")
  _check_divides(indices.shape[0], batch_axes, mesh, "the batch size", "batch")
  shared = [a for a in value_axes if a in batch_axes]
  if shared:
    raise ValueError(f"sharding_rules map both 'value' and 'batch' to mesh axes {shared}; the "
                     "sharded value read needs the value axes to leave the batch unsharded")
  exchange_axes = tuple(a for a in batch_axes if a in slot_axes)
  reduce_axes = tuple(a for a in slot_axes if a not in batch_axes)
  # Batch axes that do not shard the table: its gradient is summed over them (data
  # parallelism). Marking the block as varying over them up front makes that one psum of
  # the finished gradient, instead of one per read inside the backward scan of _add_reads.
  replica_axes = tuple(a for a in batch_axes if a not in slot_axes + value_axes)
  varying_axes = batch_axes + tuple(a for a in slot_axes + value_axes if a not in batch_axes)

  def local_read(table_block, indices, weights):
    if replica_axes:
      table_block = jax.lax.pcast(table_block, replica_axes, to="varying")
    if exchange_axes:
      indices = jax.lax.all_gather(indices, exchange_axes, axis=0, tiled=True)
      weights = jax.lax.all_gather(weights, exchange_axes, axis=0, tiled=True)
    rows = table_block.shape[0]
    first = jax.lax.axis_index(slot_axes) * rows if slot_axes else 0
    local = indices - first
    held = (local >= 0) & (local < rows)
    # shard_map types values by the mesh axes they vary over, and a scan's carry must keep
    # its type: the sum starts from zeros that vary like the reads added to it.
    zeros = jax.lax.pcast(jnp.zeros((*indices.shape[:2], table_block.shape[1]),
                                    table_block.dtype), varying_axes, to="varying")
    partial = _add_reads(zeros, table_block, jnp.where(held, local, 0),
                         jnp.where(held, weights, jnp.zeros_like(weights)))
    if exchange_axes:
      partial = jax.lax.psum_scatter(partial, exchange_axes, scatter_dimension=0, tiled=True)
    if reduce_axes:
      partial = jax.lax.psum(partial, reduce_axes)
    return partial

  tokens = P(batch_axes or None)
  return jax.shard_map(
      local_read,
      in_specs=(table_spec, tokens, tokens),
      out_specs=P(batch_axes or None, None, value_axes or None),
  )(table, indices, weights)


def _check_divides(size: int, axes: tuple[str, ...], mesh, what: str, logical: str) -> None:
  devices = math.prod(mesh.shape[a] for a in axes)
  if size % devices:
    raise ValueError(f"{what} ({size}) must be divisible by the {devices} devices of mesh axes "
                     f"{axes} that sharding_rules assign to '{logical}'")
