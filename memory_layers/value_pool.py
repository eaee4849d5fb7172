"""The value table of a memory layer, as a module that several layers can share.

Memory+ (Berges et al. 2024) lets several memory layers read one shared pool of values,
while each layer keeps its own query projection, sub-keys and output projections. Here the
pool is an ordinary NNX module: build one `ValuePool` and pass the same object to every
`ProductKeyMemory` that should read it. NNX keeps shared references, so `nnx.split` stores
the table once (at the first path that reaches it), `nnx.merge` restores the sharing, and
the gradient of the table is the sum of every layer's contribution.
"""
import jax
import jax.numpy as jnp
from flax import nnx


class ValueTable(nnx.Param):
  """A value table [N slots, value dim], logical axes ('slots', 'value').

  A distinct Param type, so optimizers and filters can single it out (see
  `memory_layers.value_learning_rate`).
  """


class ValuePool(nnx.Module):
  """N value rows of width `value_dim`, initialised N(0, value_dim**-0.5) as in Memory+."""

  def __init__(self, num_slots: int, value_dim: int, *, rngs: nnx.Rngs,
               param_dtype=jnp.float32):
    for name, value in (("num_slots", num_slots), ("value_dim", value_dim)):
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"ValuePool {name} must be a positive integer, got {value!r}")
    std = value_dim ** -0.5
    self.table = ValueTable(
        std * jax.random.normal(rngs.params(), (num_slots, value_dim), param_dtype),
        out_sharding=("slots", "value"), eager_sharding=False)

  @property
  def num_slots(self) -> int:
    return self.table.shape[0]

  @property
  def value_dim(self) -> int:
    return self.table.shape[1]
