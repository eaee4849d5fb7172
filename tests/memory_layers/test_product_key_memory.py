"""Product-key search and read against the dense reference: slots, weights, outputs, gradients."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memory_layers import ProductKeyMemory, ValuePool, dense_lookup, dense_memory

EMBED, SLOTS, HEADS, KEY_DIM, TOP_K = 16, 256, 2, 8, 4

CONFIGS = {
    "pkm": dict(gated_output=False, query_norm=False, value_dim=EMBED),
    "memory_plus": dict(gated_output=True, query_norm=True, value_dim=24),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
  cfg = CONFIGS[request.param]
  rngs = nnx.Rngs(request.param_index)
  layer = ProductKeyMemory(EMBED, ValuePool(SLOTS, cfg["value_dim"], rngs=rngs),
                           num_heads=HEADS, key_dim=KEY_DIM, top_k=TOP_K,
                           gated_output=cfg["gated_output"], query_norm=cfg["query_norm"],
                           rngs=rngs)
  x = jax.random.normal(jax.random.key(10), (2, 8, EMBED))
  target = jax.random.normal(jax.random.key(11), (2, 8, EMBED))
  return request.param, layer, x, target


def test_product_key_top_k_equals_dense_top_k(case):
  _, layer, x, _ = case
  fast, dense = layer.lookup(x), dense_lookup(layer, x)
  assert fast.indices.shape == (2, 8, HEADS, TOP_K)
  np.testing.assert_array_equal(fast.indices, dense.indices)
  chex.assert_trees_all_close(fast.weights, dense.weights, rtol=1e-6, atol=1e-7)
  # Many distinct slots are read, from both halves of the product, so the test is not trivial.
  assert len(np.unique(fast.indices)) > 3 * TOP_K
  assert len(np.unique(np.asarray(fast.indices) // 16)) > 4


def test_outputs_and_gradients_equal_dense_reference(case):
  name, layer, x, target = case
  graphdef, state = nnx.split(layer)
  params = nnx.to_pure_dict(state)

  def loss(forward):
    def f(params):
      y = forward(nnx.merge(graphdef, params), x)
      return jnp.sum(y * target), y
    return jax.jit(jax.value_and_grad(f, has_aux=True))

  (fast_loss, fast_y), fast_grads = loss(lambda m, x: m(x))(params)
  (dense_loss, dense_y), dense_grads = loss(dense_memory)(params)

  assert fast_y.shape == x.shape
  chex.assert_trees_all_close(fast_y, dense_y, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(fast_loss, dense_loss, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(fast_grads, dense_grads, rtol=1e-5, atol=1e-6)
  expected = {"query_kernel", "query_bias", "sub_keys", "values"}
  if name == "memory_plus":
    expected |= {"query_scale", "gate_kernel", "out_kernel"}
  assert set(fast_grads) == expected
  for key in expected:  # every parameter group really receives gradient
    assert float(jnp.abs(jnp.asarray(jax.tree.leaves(fast_grads[key])[0])).max()) > 0, key
  # The value gradient touches only the rows that were read.
  read = np.unique(layer.lookup(x).indices)
  touched = np.flatnonzero(np.abs(np.asarray(fast_grads["values"]["table"])).sum(axis=1))
  np.testing.assert_array_equal(touched, read)


def test_flops_per_token_counts_the_matmuls(case):
  name, layer, _, _ = case
  value_dim = CONFIGS[name]["value_dim"]
  queries, scores = 2 * EMBED * HEADS * KEY_DIM, 2 * HEADS * 16 * KEY_DIM
  reads = 2 * HEADS * TOP_K * value_dim
  gate = 4 * EMBED * value_dim if name == "memory_plus" else 0
  assert layer.flops_per_token(8) == queries + scores + reads + gate
