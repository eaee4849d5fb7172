"""Optax rules as the Titans memory's in-context update (hope.neural_memory, hope.optimizers)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hope import optimizers as H
from hope.neural_memory import NeuralMemory, memory_loss, memory_mlp, reference_memory

SEQ, DIM = 6, 4




def _inputs(seed=0):
  keys = jax.random.split(jax.random.key(seed), 8)
  weights = (0.3 * jax.random.normal(keys[0], (DIM, 2 * DIM)),
             0.3 * jax.random.normal(keys[1], (2 * DIM, DIM)))
  q, k, v = (jax.random.normal(key, (SEQ, DIM)) for key in keys[2:5])
  lr = 0.1 * jax.nn.sigmoid(jax.random.normal(keys[5], (SEQ,)))
  eta = jax.nn.sigmoid(jax.random.normal(keys[6], (SEQ,)))
  retain = 1 - 0.1 * jax.nn.sigmoid(jax.random.normal(keys[7], (SEQ,)))
  write = jnp.array([1, 1, 0, 1, 1, 1], jnp.float32)  # one masked token: gates as the module
  lr, eta, retain = lr * write, jnp.where(write > 0, eta, 1.0), jnp.where(write > 0, retain, 1.0)
  return weights, q, k, v, lr, eta, retain, write


def test_momentum_sgd_through_the_memory_equals_optax_sgd_step_by_step():
  weights, q, k, v, *_ = _inputs()
  ones = jnp.ones((SEQ,))
  rule = optax.sgd(0.05, momentum=0.9)

  @jax.jit
  def both(weights):
    through_memory = reference_memory(weights, rule.init(weights), q, k, v, ones, ones, ones,
                                      ones, chunk_size=1, use_momentum=True, rule=rule)
    def by_hand(carry, token):  # optax by hand: one sgd step per token on l(W; k_t, v_t)
      w, state = carry
      q_t, k_t, v_t = token
      updates, state = rule.update(jax.grad(memory_loss)(w, k_t, v_t), state, w)
      w = optax.apply_updates(w, updates)
      return (w, state), memory_mlp(w, q_t)

    (w, state), y = jax.lax.scan(by_hand, (weights, rule.init(weights)), (q, k, v))
    return through_memory, (y, w, state)

  through_memory, by_hand = both(weights)
  chex.assert_trees_all_close(through_memory, by_hand, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 2])
def test_titans_rule_as_optax_chain_equals_the_direct_recurrence(chunk_size):
  weights, q, k, v, lr, eta, retain, write = _inputs(1)
  rule = H.titans_rule()

  @jax.jit
  def both(weights):
    direct = reference_memory(weights, jax.tree.map(jnp.zeros_like, weights), q, k, v, lr, eta,
                              retain, write, chunk_size=chunk_size, use_momentum=True)
    chained = reference_memory(weights, rule.init(weights), q, k, v, lr, eta, retain, write,
                               chunk_size=chunk_size, use_momentum=True, rule=rule)
    return direct, chained

  (y, w, s), (y_rule, w_rule, state) = both(weights)
  chex.assert_trees_all_close((y_rule, w_rule), (y, w), atol=1e-6)
  chex.assert_trees_all_close(state[1].inner_state.trace, s, atol=1e-6)  # optax.trace holds S


def test_neural_memory_module_takes_a_rule():
  """NeuralMemory(rule=titans_rule()) reads out the same as its built-in update."""
  memory = NeuralMemory(16, num_heads=2, depth=1, chunk_size=1, implementation="reference",
                        rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(memory)
  x = jax.random.normal(jax.random.key(0), (2, 3, 16))

  @jax.jit
  def both(params, x):
    plain, chained = nnx.merge(graphdef, params), nnx.merge(graphdef, params)
    chained.rule = H.titans_rule()
    return plain(x)[0], chained(x)

  y, (y_rule, state) = both(params, x)
  np.testing.assert_allclose(y_rule, y, atol=1e-5)
  assert jax.tree.leaves(state.momentum)[0].shape[:2] == (2, 2)  # one rule state per (row, head)
  with pytest.raises(ValueError, match="implementation='reference'"):
    NeuralMemory(16, num_heads=2, rngs=nnx.Rngs(0), rule=optax.sgd(0.1))
