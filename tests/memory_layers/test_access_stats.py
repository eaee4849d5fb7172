"""Slot-access counts: equal a NumPy count, ignore masked padding, leave outputs unchanged."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memory_layers import ProductKeyMemory, SlotAccess, ValuePool, slot_access_counts

EMBED, SLOTS = 8, 64


def test_counts_by_hand():
  # batch 1, seq 2, heads 2, k 2; the second token is padding.
  indices = jnp.array([[[[3, 5], [5, 0]], [[7, 7], [3, 1]]]], jnp.int32)
  mask = jnp.array([[1, 0]])
  want = np.zeros(8, np.int32)
  want[[3, 5, 0]] = [1, 2, 1]
  np.testing.assert_array_equal(slot_access_counts(indices, 8, mask), want)
  want[[7, 3, 1]] += [2, 1, 1]
  np.testing.assert_array_equal(slot_access_counts(indices, 8), want)


@pytest.fixture(scope="module")
def recorded():
  """A layer run on 3 real rows, then on the same rows plus 2 masked padding rows."""
  rngs = nnx.Rngs(0)
  layer = ProductKeyMemory(EMBED, ValuePool(SLOTS, EMBED, rngs=rngs), num_heads=2, key_dim=4,
                           top_k=3, record_access=True, rngs=rngs)
  graphdef, state = nnx.split(layer)
  params = nnx.to_pure_dict(state)
  real = jax.random.normal(jax.random.key(1), (3, 5, EMBED))
  mask = jnp.ones((3, 5), jnp.int32).at[2, 3:].set(0)  # the last row ends with 2 pad tokens
  padded = jnp.concatenate([real, 4.0 * jax.random.normal(jax.random.key(2), (2, 5, EMBED))])
  padded_mask = jnp.concatenate([mask, jnp.zeros((2, 5), jnp.int32)])

  @jax.jit
  def run(params, x, mask):
    y, access = nnx.capture(nnx.merge(graphdef, params), SlotAccess)(x, mask=mask)
    return y, nnx.to_pure_dict(access)

  plain = nnx.merge(graphdef, params)
  plain.record_access = False
  return dict(real=(real, mask, *run(params, real, mask)),
              padded=(padded, padded_mask, *run(params, padded, padded_mask)),
              unrecorded=jax.jit(lambda x: plain(x))(real))


def test_recorded_counts_equal_numpy_count(recorded):
  x, mask, y, access = recorded["real"]
  (indices,) = access["indices"]
  assert indices.shape == (3, 5, 2, 3)
  keep = np.asarray(mask, bool)
  want = np.bincount(np.asarray(indices)[keep].ravel(), minlength=SLOTS)
  np.testing.assert_array_equal(access["counts"], want)
  assert int(access["counts"].sum()) == keep.sum() * 2 * 3
  # The padding tokens of row 2 read slots too; they are excluded, not absent.
  assert np.bincount(np.asarray(indices)[~keep].ravel(), minlength=SLOTS).sum() == 2 * 2 * 3


def test_masked_padding_rows_leave_counts_and_outputs_unchanged(recorded):
  _, _, y, access = recorded["real"]
  _, _, padded_y, padded_access = recorded["padded"]
  np.testing.assert_array_equal(padded_access["counts"], access["counts"])
  np.testing.assert_allclose(padded_y[:3], y, rtol=1e-6, atol=1e-6)
  (padded_indices,) = padded_access["indices"]
  assert padded_indices.shape[0] == 5


def test_recording_does_not_change_outputs(recorded):
  _, _, y, _ = recorded["real"]
  np.testing.assert_array_equal(recorded["unrecorded"], y)
