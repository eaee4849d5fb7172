"""Bad configurations raise ValueErrors that name the argument and what was expected."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from hope.sharding import logical_to_mesh_spec, normalize_rules
from memory_layers import ProductKeyMemory, ValuePool

RULES = (("batch", ("data", "fsdp")), ("embed", None), ("heads", "tensor"), ("slots", "fsdp"),
         ("value", "tensor"))


def build(num_slots=64, value_dim=8, embed_dim=8, **kwargs):
  rngs = nnx.Rngs(0)
  kwargs = dict(dict(num_heads=2, key_dim=4, top_k=4), **kwargs)
  return ProductKeyMemory(embed_dim, ValuePool(num_slots, value_dim, rngs=rngs), rngs=rngs,
                          **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_slots=60), r"values.num_slots \(60\) must be a perfect square"),
    (dict(top_k=9), r"top_k \(9\) must be at most sqrt\(num_slots\) = 8"),
    (dict(key_dim=5), r"key_dim \(5\) must be even"),
    (dict(num_heads=0), r"num_heads must be a positive integer, got 0"),
    (dict(value_dim=6), r"value_dim \(6\) must equal embed_dim \(8\) unless gated_output"),
    (dict(num_slots=0), r"ValuePool num_slots must be a positive integer, got 0"),
])
def test_bad_layer_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    build(**kwargs)


def test_bad_rules():
  with pytest.raises(ValueError, match=r"mesh axis 'model', which the mesh does not have; its "
                                       r"axes are \('data', 'fsdp', 'tensor'\)"):
    logical_to_mesh_spec(P("slots", "value"), dict(RULES, value="model"),
                         ("data", "fsdp", "tensor"))
  with pytest.raises(ValueError, match=r"no entry for logical axis 'value'"):
    logical_to_mesh_spec(P("slots", "value"), RULES[:-1], ("data", "fsdp", "tensor"))
  with pytest.raises(ValueError, match=r"entry for logical axis 'slots' must be a mesh axis name"):
    normalize_rules((("slots", 3),))
  with pytest.raises(ValueError, match=r"not a \(logical axis, mesh axes\) pair"):
    normalize_rules(("slots",))


@pytest.mark.parametrize("rules, batch, message", [
    (dict(RULES, value="model"), 8, r"logical axis 'value' to mesh axis 'model'"),
    (RULES, 2, r"the batch size \(2\) must be divisible by the 4 devices of mesh axes "
               r"\('data', 'fsdp'\) that sharding_rules assign to 'batch'"),
    (dict(RULES, value="fsdp", slots=None), 8, r"map both 'value' and 'batch' to mesh axes"),
])
def test_bad_sharded_reads(rules, batch, message):
  layer = build(sharding_rules=rules)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), pytest.raises(ValueError, match=message):
    jax.eval_shape(layer, jnp.zeros((batch, 3, 8)))


def test_slots_not_divisible_by_their_devices():
  layer = build(num_slots=81, top_k=4, sharding_rules=RULES)
  mesh = jax.make_mesh((1, 2, 4), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), pytest.raises(
      ValueError, match=r"the value table's num_slots \(81\) must be divisible by the 2 "
                        r"devices of mesh axes \('fsdp',\)"):
    jax.eval_shape(layer, jnp.zeros((2, 3, 8)))
