"""A higher learning rate for value tables, as an optax rule on plain parameter pytrees.

Value rows are read sparsely (a few of N per token), so memory layers train them with a
larger step than the rest: the PKM reference code gives the values their own Adam at lr
1e-3 (Lample et al. 2019), the Memory+ configs a value lr of 1e-3 against 1e-4 for the
model, under the same schedule (Berges et al. 2024). Two ways to get that with optax, both
keyed on the `ValueTable` parameter type:

- a multiplier on the values' updates, after any base optimizer:
      optax.chain(optax.adamw(schedule), scale_value_updates(state, 10.0))
- separate optimizers per group:
      optax.partition({"value_table": optax.adam(1e-3), "other": optax.adamw(1e-4)},
                      value_table_labels(state))

`state` is the model's `nnx.State` (from `nnx.split` or `nnx.state`); the labels follow the
structure of `nnx.to_pure_dict(state)`, the pytree the optimizer sees.
"""
import jax
import optax
from flax import nnx

from memory_layers.value_pool import ValueTable

VALUE_TABLE = "value_table"
OTHER = "other"


def value_table_labels(state: nnx.State) -> dict:
  """`nnx.to_pure_dict(state)`'s structure with "value_table" at value tables, "other" elsewhere."""
  labels = jax.tree.map(lambda v: VALUE_TABLE if isinstance(v, ValueTable) else OTHER, state,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))
  return nnx.to_pure_dict(labels)


def scale_value_updates(state: nnx.State, multiplier: float) -> optax.GradientTransformation:
  """Multiplies the updates of value tables by `multiplier` and leaves the rest unchanged."""
  return optax.partition({VALUE_TABLE: optax.scale(multiplier), OTHER: optax.identity()},
                         value_table_labels(state))
