"""Shared tiny models and batches for the cl_methods tests."""
import jax.numpy as jnp
import pytest

from cl_methods import batch as batch_lib
from cl_methods import benchmark_models


@pytest.fixture(scope="session")
def tiny_mlp():
  """MLP 6 -> 8 -> 4 in functional form."""
  return benchmark_models.build("mlp", (6,), 4, hidden=(8,), seed=0)


@pytest.fixture(scope="session")
def make_batch():
  def make(x, y, n_units, *, context=0, mask=None, valid=None):
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    if mask is None:
      mask = jnp.ones((n, n_units), bool)
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), (n, n_units))
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    return batch_lib.Batch(x=x, y=jnp.asarray(y, jnp.int32), mask=mask,
                           context=jnp.broadcast_to(jnp.asarray(context, jnp.int32), (n,)),
                           valid=valid)
  return make
