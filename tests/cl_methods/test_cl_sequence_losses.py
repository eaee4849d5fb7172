"""The methods' losses and importances on sequence models (a language model's next-token
logits, (B, T, K)): each equals its per-position definition, and the sampled Fisher is an
unbiased estimate of the exact one."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_methods import batch as batch_lib
from cl_methods import losses, regularization, replay

K, T = 5, 4


def _logits(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape) * 2.0


def test_sequence_cross_entropy_is_the_mean_over_positions_then_examples():
  logits, y = _logits(0, (3, T, K)), jax.random.randint(jax.random.key(1), (3, T), 0, K)
  mask = jnp.array([[True] * K, [True, True, False, True, True], [True] * K])
  valid = jnp.array([True, True, False])
  got = losses.cross_entropy(logits, y, mask, valid)
  per_position = [losses.cross_entropy(logits[:, t], y[:, t], mask, valid) for t in range(T)]
  assert got == pytest.approx(float(np.mean(per_position)), rel=1e-6)


def test_sequence_distillation_is_the_mean_over_positions():
  student, teacher = _logits(2, (2, T, K)), _logits(3, (2, T, K))
  mask, valid = jnp.ones((2, K), bool).at[1, 0].set(False), jnp.ones((2,), bool)
  got = losses.distillation(student, teacher, mask, valid, 2.0)
  per_position = [losses.distillation(student[:, t], teacher[:, t], mask, valid, 2.0)
                  for t in range(T)]
  assert got == pytest.approx(float(np.mean(per_position)), rel=1e-6)


def _sequence_model():
  """x (B, T) int -> logits (B, T, K): an embedding, then a dense layer."""
  params = {"embed": _logits(4, (7, 3)) * 0.5, "out": _logits(5, (3, K)) * 0.5}
  return params, lambda p, x: jnp.tanh(p["embed"][x]) @ p["out"]


def _data(x, mask=None):
  n = x.shape[0]
  return batch_lib.Batch(x=x, y=jnp.zeros(x.shape, jnp.int32),
                         mask=jnp.ones((n, K), bool) if mask is None else mask,
                         context=jnp.zeros((n,), jnp.int32), valid=jnp.ones((n,), bool))


def _per_position_exact_fisher(apply_fn, params, x):
  """Slow reference: mean over examples and positions of sum_y p(y) (d log p(y) / d theta)^2."""
  total = jax.tree.map(jnp.zeros_like, params)
  for i in range(x.shape[0]):
    for t in range(x.shape[1]):
      logp = lambda p: jax.nn.log_softmax(apply_fn(p, x[i:i + 1])[0, t])
      prob = jnp.exp(logp(params))
      for y in range(K):
        g = jax.grad(lambda p: logp(p)[y])(params)
        total = jax.tree.map(lambda a, b: a + prob[y] * b ** 2, total, g)
  return jax.tree.map(lambda a: a / (x.shape[0] * x.shape[1]), total)


def test_sampled_fisher_of_a_sequence_model_is_unbiased():
  params, apply_fn = _sequence_model()
  x = jax.random.randint(jax.random.key(6), (2, T), 0, 7)
  exact = _per_position_exact_fisher(apply_fn, params, x)
  keys = jax.random.split(jax.random.key(7), 4000)
  draws = jax.vmap(lambda k: regularization.diagonal_fisher(
      apply_fn, params, _data(x), estimate="sampled", key=k))(keys)
  mean = jax.tree.map(lambda d: d.mean(0), draws)
  stderr = jax.tree.map(lambda d: d.std(0) / np.sqrt(len(keys)), draws)
  for name in params:  # within 5 standard errors, plus 2% of the largest entry (an entry
    # that is large only for labels of tiny probability has a misleadingly small stderr)
    floor = 0.02 * float(exact[name].max())
    assert np.all(np.abs(mean[name] - exact[name]) <= 5 * stderr[name] + floor), name


def test_sampled_fisher_of_a_classifier_is_unbiased_for_the_exact_one():
  w = _logits(8, (6, K)) * 0.5
  apply_fn = lambda p, x: x @ p
  x = _logits(9, (3, 6))
  mask = jnp.ones((3, K), bool).at[2, 1:3].set(False)
  exact = regularization.diagonal_fisher(apply_fn, w, _data(x, mask))
  keys = jax.random.split(jax.random.key(10), 4000)
  draws = jax.vmap(lambda k: regularization.diagonal_fisher(
      apply_fn, w, _data(x, mask), estimate="sampled", key=k))(keys)
  stderr = draws.std(0) / np.sqrt(len(keys))
  assert np.all(np.abs(draws.mean(0) - exact) <= 5 * stderr + 0.02 * float(exact.max()))


def test_the_exact_fisher_refuses_sequences():
  params, apply_fn = _sequence_model()
  with pytest.raises(ValueError, match="use the sampled estimate"):
    regularization.diagonal_fisher(apply_fn, params, _data(jnp.zeros((2, T), jnp.int32)))


def test_derpp_stores_the_logits_of_every_position():
  params, apply_fn = _sequence_model()
  method = replay.dark_experience_replay(apply_fn, buffer_size=6, alpha=0.5, beta=0.5)
  state = method.init_state(params, _data(jnp.zeros((1, T), jnp.int32)))
  assert state.items["logits"].shape == (6, T, K)
  batch = _data(jax.random.randint(jax.random.key(11), (3, T), 0, 7))
  loss, aux = method.loss(params, state, batch, jax.random.key(12))
  _, state = method.after_update(params, params, None, state, batch, aux, None,
                                 jax.random.key(13))
  chex.assert_trees_all_close(state.items["logits"][:3], apply_fn(params, batch.x))
