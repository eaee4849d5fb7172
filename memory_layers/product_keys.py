"""Exact top-k search over N = n*n product keys (Lample et al. 2019, sec. 3.2).

Slot i = a*n + b has the key [c1_a ; c2_b], the concatenation of row a of the first sub-key
table and row b of the second. A query q = [q1 ; q2] scores it as

    s_i = q1 . c1_a + q2 . c2_b.

Because the score is a sum of two independent terms, the k best of the N = n*n sums are
among the k*k sums of the k best of each half, so

    I1, S1 = top_k(q1 C1^T),  I2, S2 = top_k(q2 C2^T)
    I = top_k over (a, b) in I1 x I2 of S1[a] + S2[b]            (sec. 3.2)
    w = softmax(s_I)                                              (sec. 3.1, eq. 2)

costs O(n d + k^2) per head instead of O(N d) and gives the same slots and weights as a
search over all N keys (`memory_layers.dense_reference` checks this).
"""
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp


class SlotLookup(NamedTuple):
  """The slots a memory layer reads for each token and head.

  indices: [batch, seq, heads, k] int32 slot ids in [0, N), best first.
  weights: [batch, seq, heads, k] float32 softmax weights over each head's k slots.
  """
  indices: jax.Array
  weights: jax.Array


def product_key_search(queries: jax.Array, sub_keys: jax.Array, top_k: int) -> SlotLookup:
  """The top_k of N = n*n product keys for each query, per head.

  Args:
    queries: [batch, seq, heads, key_dim]; key_dim is even, the halves score the two tables.
    sub_keys: [heads, 2, n, key_dim // 2], the two sub-key tables of every head.
    top_k: slots per head, at most n.
  Returns:
    The selected slots (index a*n + b) and their softmax weights.
  """
  chex.assert_rank([queries, sub_keys], 4)
  heads, two, n, half = sub_keys.shape
  chex.assert_shape(queries, (None, None, heads, 2 * half))
  chex.assert_equal(two, 2)
  q1, q2 = queries[..., :half], queries[..., half:]
  scores1 = jnp.einsum("bshd,hnd->bshn", q1, sub_keys[:, 0])
  scores2 = jnp.einsum("bshd,hnd->bshn", q2, sub_keys[:, 1])
  best1, rows1 = jax.lax.top_k(scores1, top_k)
  best2, rows2 = jax.lax.top_k(scores2, top_k)
  pair_scores = best1[..., :, None] + best2[..., None, :]
  scores, pairs = jax.lax.top_k(pair_scores.reshape(*pair_scores.shape[:-2], top_k * top_k),
                                top_k)
  row = jnp.take_along_axis(rows1, pairs // top_k, axis=-1)
  col = jnp.take_along_axis(rows2, pairs % top_k, axis=-1)
  indices = (row * n + col).astype(jnp.int32)
  weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
  return SlotLookup(indices, weights)
