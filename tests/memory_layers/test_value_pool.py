"""A value pool shared by two layers is stored once and receives both layers' gradients."""
import chex
import jax
import jax.numpy as jnp
from flax import nnx

from memory_layers import ProductKeyMemory, ValuePool, ValueTable

EMBED = 8


class TwoMemoryLayers(nnx.Module):
  """Two memory layers in sequence that read one `ValuePool` (Memory+'s shared pool)."""

  def __init__(self, rngs: nnx.Rngs):
    pool = ValuePool(64, EMBED, rngs=rngs)
    self.first = ProductKeyMemory(EMBED, pool, num_heads=2, key_dim=4, top_k=3, rngs=rngs)
    self.second = ProductKeyMemory(EMBED, pool, num_heads=2, key_dim=4, top_k=3, rngs=rngs)

  def __call__(self, x):
    return self.second(x + self.first(x))


def test_shared_pool_is_stored_once_and_gets_both_gradients():
  model = TwoMemoryLayers(nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  variables = jax.tree.leaves(state, is_leaf=lambda v: isinstance(v, nnx.Variable))
  assert sum(isinstance(v, ValueTable) for v in variables) == 1
  assert "values" in params["first"] and "values" not in params["second"]
  merged = nnx.merge(graphdef, params)
  assert merged.first.values is merged.second.values

  x = jax.random.normal(jax.random.key(1), (2, 4, EMBED))
  target = jax.random.normal(jax.random.key(2), (2, 4, EMBED))
  shared_grads = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) * target)))(params)

  # The same computation with each layer reading its own copy of the table.
  table = params["first"]["values"]["table"]

  def split_tables(first_table, second_table):
    m = nnx.merge(graphdef, params)
    m.second.values = ValuePool(64, EMBED, rngs=nnx.Rngs(9))
    m.first.values.table[...] = first_table
    m.second.values.table[...] = second_table
    return jnp.sum(m(x) * target)

  first_grad, second_grad = jax.jit(jax.grad(split_tables, argnums=(0, 1)))(table, table)
  assert float(jnp.abs(first_grad).max()) > 0 and float(jnp.abs(second_grad).max()) > 0
  chex.assert_trees_all_close(shared_grads["first"]["values"]["table"], first_grad + second_grad,
                              rtol=1e-6, atol=1e-7)
  assert set(shared_grads["second"]) == {"query_kernel", "query_bias", "sub_keys"}
