"""A slow, obviously correct memory layer: every one of the N keys is scored.

The key of slot i = a*n + b is built explicitly as [C1[a] ; C2[b]]; the top-k runs over all
N scores (Lample et al. 2019, eqs. 1-2) and the read is a dense [N]-wide weighted sum of
the whole table (eq. 3), with no gather. It shares only the query and output projections
with `ProductKeyMemory`, so comparing the two tests the product-key search and the value
read, values and gradients. Memory and time are O(N) per token: for tests only.
"""
import jax
import jax.numpy as jnp

from memory_layers.product_key_memory import ProductKeyMemory
from memory_layers.product_keys import SlotLookup


def dense_keys(sub_keys: jax.Array) -> jax.Array:
  """[heads, 2, n, d/2] sub-keys -> [heads, n*n, d] full keys, row a*n + b = [C1[a] ; C2[b]]."""
  heads, _, n, half = sub_keys.shape
  first = jnp.broadcast_to(sub_keys[:, 0, :, None, :], (heads, n, n, half))
  second = jnp.broadcast_to(sub_keys[:, 1, None, :, :], (heads, n, n, half))
  return jnp.concatenate([first, second], axis=-1).reshape(heads, n * n, 2 * half)


def dense_lookup(layer: ProductKeyMemory, x: jax.Array) -> SlotLookup:
  """Top-k over all N slot scores q . key_i, per head."""
  scores = jnp.einsum("bshd,hnd->bshn", layer.queries(x), dense_keys(layer.sub_keys[...]))
  best, indices = jax.lax.top_k(scores, layer.top_k)
  return SlotLookup(indices.astype(jnp.int32), jax.nn.softmax(best.astype(jnp.float32), axis=-1))


def dense_memory(layer: ProductKeyMemory, x: jax.Array) -> jax.Array:
  """The layer's output computed with `dense_lookup` and a dense read of the whole table."""
  lookup = dense_lookup(layer, x)
  slot_weights = jnp.einsum("bshk,bshkn->bsn", lookup.weights,
                            jax.nn.one_hot(lookup.indices, layer.num_slots, dtype=jnp.float32))
  y = slot_weights @ layer.values.table[...]
  return layer.project_output(x, y)
