"""The zoo's model builders by name: `config.model.name` selects one, its other fields are
the builder's keyword arguments."""
import inspect

import jax

from flax import nnx

from runtime.errors import UsageError
from hope.hope_lm import hope_lm
from hope.titans import titans
from hope.transformer import transformer
from memory_layers.memory_lm import memory_lm

BUILDERS = {
    "transformer": transformer,
    "titans": titans,
    "memory_lm": memory_lm,
    "hope": hope_lm,
}


def build(model_config: dict, seed=0, axis_rules: dict | None = None):
  """Builds the model named by model_config['name'] (call under nnx.eval_shape for shapes);
  `seed` is an int or a (traced) int32 scalar.

  Builders that take `sharding_rules` (layers that shard their own reads) get `axis_rules`.
  """
  kwargs = dict(model_config)
  name = kwargs.pop("name", None)
  if name not in BUILDERS:
    raise UsageError(f"config.model.name: unknown model {name!r}; choose from {sorted(BUILDERS)}")
  builder = BUILDERS[name]
  accepted = set(inspect.signature(builder).parameters) - {"rngs", "sharding_rules"}
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise UsageError(f"config.model: {name} has no field(s) {unknown}; it takes {sorted(accepted)}")
  if "sharding_rules" in inspect.signature(builder).parameters:
    kwargs["sharding_rules"] = axis_rules
  try:
    return builder(**kwargs, rngs=nnx.Rngs(jax.random.key(seed)))
  except (ValueError, TypeError) as e:
    raise UsageError(f"config.model ({name}): {e}") from e
