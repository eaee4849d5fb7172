"""The value-table learning-rate multiplier as an optax rule over plain parameter pytrees."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from memory_layers import ProductKeyMemory, ValuePool, scale_value_updates, value_table_labels


def test_value_updates_are_scaled_and_the_rest_are_not():
  rngs = nnx.Rngs(0)
  layer = ProductKeyMemory(8, ValuePool(16, 4, rngs=rngs), num_heads=1, key_dim=4, top_k=2,
                           gated_output=True, rngs=rngs)
  _, state = nnx.split(layer)
  params = nnx.to_pure_dict(state)
  labels = value_table_labels(state)
  assert labels["values"] == {"table": "value_table"}
  assert jax.tree.leaves(labels).count("value_table") == 1

  grads = jax.tree.map(jnp.ones_like, params)
  tx = optax.chain(optax.sgd(0.1), scale_value_updates(state, 10.0))
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["values"]["table"], -1.0)
  for name in ("query_kernel", "query_bias", "sub_keys", "gate_kernel", "out_kernel"):
    np.testing.assert_allclose(updates[name], -0.1, err_msg=name)

  # The same labels route the groups to separate optimizers.
  tx = optax.partition({"value_table": optax.sgd(1.0), "other": optax.sgd(0.01)}, labels)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["values"]["table"], -1.0)
  np.testing.assert_allclose(updates["sub_keys"], -0.01)
