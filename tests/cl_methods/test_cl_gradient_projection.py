"""A-GEM: the projected gradient never increases the memory loss to first order."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from cl_methods import gradient_projection
from cl_methods import losses
from cl_methods import pytree_math
from cl_methods import replay_buffer


def test_projection_removes_only_the_conflicting_component():
  rng = np.random.default_rng(0)
  g = {"a": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=5))}
  conflicting = jax.tree.map(lambda x: -x + 0.1, g)
  assert pytree_math.tree_dot(g, conflicting) < 0
  proj = gradient_projection.project(g, conflicting, eps=0.0)
  np.testing.assert_allclose(pytree_math.tree_dot(proj, conflicting), 0.0, atol=1e-5)
  # The removed part is parallel to the reference gradient.
  removed = jax.tree.map(jnp.subtract, g, proj)
  cos = pytree_math.tree_dot(removed, conflicting) / jnp.sqrt(
      pytree_math.tree_dot(removed, removed) * pytree_math.tree_dot(conflicting, conflicting))
  np.testing.assert_allclose(abs(cos), 1.0, rtol=1e-5)
  aligned = jax.tree.map(lambda x: x + 0.05, g)
  assert pytree_math.tree_dot(g, aligned) > 0
  chex.assert_trees_all_close(gradient_projection.project(g, aligned, eps=0.0), g)


def test_agem_step_does_not_increase_memory_loss(tiny_mlp, make_batch):
  apply_fn, params = tiny_mlp.apply_fn, tiny_mlp.params
  method = gradient_projection.agem(apply_fn, buffer_size=16, eps=1e-12)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 6))
  past = make_batch(x, [0, 1] * 4, 4, mask=[1, 1, 0, 0])
  now = make_batch(x, [1, 0] * 4, 4, mask=[1, 1, 0, 0])   # same inputs, swapped labels
  memory = method.init_state(params, now)
  key = jax.random.key(0)
  _, memory = jax.jit(method.after_update)(params, params, None, memory, past, {}, None, key)
  # The reference batch A-GEM draws from its memory with this key.
  items, valid = jax.jit(replay_buffer.sample, static_argnums=1)(memory, 8, key)

  @jax.jit
  def memory_loss(p):
    return losses.cross_entropy(apply_fn(p, items["x"]), items["y"], items["mask"], valid)

  g = jax.jit(jax.grad(lambda p: method.loss(p, memory, now, key)[0]))(params)
  g_ref = jax.jit(jax.grad(memory_loss))(params)
  assert pytree_math.tree_dot(g, g_ref) < 0
  proj = jax.jit(method.transform_grads)(g, params, memory, now, key)
  np.testing.assert_allclose(pytree_math.tree_dot(proj, g_ref), 0.0,
                             atol=1e-5 * float(pytree_math.tree_dot(g_ref, g_ref)))
  # First order: a small step along -g raises the memory loss, along the projection it
  # does not (the change is second order in the step size).
  lr = 1e-3

  def change(grads):
    return memory_loss(jax.tree.map(lambda p, d: p - lr * d, params, grads)) - memory_loss(params)

  assert change(g) > 0
  assert abs(change(proj)) < 0.02 * change(g)
