"""A memory layer sharded over 8 devices equals one device; no device holds the whole table."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from hope.sharding import logical_to_mesh_spec, param_shardings
from memory_layers import ProductKeyMemory, ValuePool

EMBED, SLOTS, VALUE_DIM = 16, 128 * 128, 32
BASE_RULES = (("batch", ("data", "fsdp")), ("embed", None), ("heads", "tensor"))

# name: (mesh shape (data, fsdp, tensor), rules for 'slots' and 'value', table shards)
LAYOUTS = {
    "value_columns": ((2, 1, 4), (("slots", None), ("value", "tensor")), 4),
    "slot_rows_sharing_batch_axis": ((2, 4, 1), (("slots", "fsdp"), ("value", None)), 4),
    "slot_rows_off_batch_axes": ((2, 1, 4), (("slots", "tensor"), ("value", None)), 4),
    "rows_and_columns": ((1, 2, 4), (("slots", "fsdp"), ("value", "tensor")), 8),
    # fsdp shards the batch too (tokens exchanged), tensor does not (partial sums reduced).
    "rows_over_two_axes": ((2, 2, 2), (("slots", ("tensor", "fsdp")), ("value", None)), 4),
}


def make_mesh(shape):
  return jax.make_mesh(shape, ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def value_and_grads(graphdef):
  def loss(params, x, target):
    y = nnx.merge(graphdef, params)(x)
    return jnp.sum(y * target), y
  return jax.value_and_grad(loss, has_aux=True)


def build(rules=None):
  rngs = nnx.Rngs(3)
  return ProductKeyMemory(EMBED, ValuePool(SLOTS, VALUE_DIM, rngs=rngs), num_heads=4,
                          key_dim=8, top_k=4, gated_output=True, query_norm=True,
                          sharding_rules=rules, rngs=rngs)


@pytest.fixture(scope="module")
def problem():
  layer = build()
  x = jax.random.normal(jax.random.key(0), (8, 4, EMBED))
  target = jax.random.normal(jax.random.key(1), (8, 4, EMBED))
  graphdef, state = nnx.split(layer)
  params = nnx.to_pure_dict(state)
  (loss, y), grads = jax.jit(value_and_grads(graphdef))(params, x, target)
  return dict(state=state, params=params, x=x, target=target, expected=(loss, y, grads))


def run_sharded(problem, layout):
  mesh_shape, table_rules, _ = LAYOUTS[layout]
  rules = BASE_RULES + table_rules
  mesh = make_mesh(mesh_shape)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(rules)))
  shardings = param_shardings(problem["state"], mesh, rules)
  tokens = NamedSharding(mesh, logical_to_mesh_spec(P("batch", None, "embed"), rules,
                                                    mesh.axis_names))
  with jax.set_mesh(mesh):
    args = (jax.device_put(problem["params"], shardings),
            jax.device_put(problem["x"], tokens), jax.device_put(problem["target"], tokens))
    compiled = jax.jit(value_and_grads(graphdef), in_shardings=(shardings, tokens, tokens)
                       ).lower(*args).compile()
    (loss, y), grads = compiled(*args)
  return mesh, shardings, compiled, (loss, y, grads)


@pytest.fixture(scope="module")
def sharded(problem):
  """run_sharded(problem, layout), compiled once per layout."""
  runs = {}

  def get(layout):
    if layout not in runs:
      runs[layout] = run_sharded(problem, layout)
    return runs[layout]
  return get


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sharded_equals_one_device(problem, sharded, layout):
  _, shardings, compiled, (loss, y, grads) = sharded(layout)
  want_loss, want_y, want_grads = problem["expected"]
  chex.assert_trees_all_close(y, want_y, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(loss, want_loss, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-6)

  # The table's gradient keeps the table's sharding (it is not gathered to one device).
  table_sharding = shardings["values"]["table"]
  grad_sharding = compiled.output_shardings[1]["values"]["table"]
  assert grad_sharding.is_equivalent_to(table_sharding, 2), (grad_sharding, table_sharding)
  assert grads["values"]["table"].sharding.is_equivalent_to(table_sharding, 2)
  shard_rows, shard_cols = table_sharding.shard_shape((SLOTS, VALUE_DIM))
  assert shard_rows * shard_cols == SLOTS * VALUE_DIM // LAYOUTS[layout][2]


def test_no_device_holds_the_whole_table(problem, sharded):
  """Rows over fsdp=2 and columns over tensor=4: each device holds 1/8 of the table.

  Per device, the compiled step's inputs and outputs (the gradient) hold one table shard
  each and the temporaries about one more, far below the table's size: neither the forward
  nor the backward pass materialises the table (an unsharded gradient would be 8 shards).
  """
  _, _, compiled, _ = sharded("rows_and_columns")
  table_bytes = SLOTS * VALUE_DIM * 4
  shard_bytes = table_bytes // 8
  stats = compiled.memory_analysis()
  other_params = sum(np.asarray(v).nbytes for k, v in problem["params"].items() if k != "values")
  activations = 3 * problem["x"].nbytes
  # Arguments: the table shard, the other (small, partly replicated) params and tokens.
  assert shard_bytes <= stats.argument_size_in_bytes <= shard_bytes + other_params + activations
  # Outputs: the gradient (table shard, other params), loss and y.
  assert shard_bytes <= stats.output_size_in_bytes <= shard_bytes + other_params + activations
  # Temporaries: the shard-sized gradient accumulator plus O(sqrt(N)) key scores.
  assert stats.temp_size_in_bytes < 2.5 * shard_bytes
  peak = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
  assert peak < table_bytes * 0.6, (stats, table_bytes)
