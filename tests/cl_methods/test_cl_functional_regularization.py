"""LwF: distillation of the frozen network's outputs on the heads of earlier contexts."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from cl_methods import functional_regularization
from cl_methods import losses

MASKS = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)   # Task-IL: one head per context


def test_lwf_distils_old_heads_only_after_the_first_context(tiny_mlp, make_batch):
  apply_fn, params = tiny_mlp.apply_fn, tiny_mlp.params
  method = functional_regularization.learning_without_forgetting(
      apply_fn, temperature=2.0, context_masks=MASKS)
  rng = np.random.default_rng(0)
  batch = make_batch(rng.normal(size=(6, 6)), [2, 3, 2, 3, 2, 3], 4, context=1, mask=MASKS[1])

  def ce(p):
    return losses.cross_entropy(apply_fn(p, batch.x), batch.y, batch.mask, batch.valid)

  loss = jax.jit(lambda p, s: method.loss(p, s, batch, None)[0])
  state = method.init_state(params, batch)
  np.testing.assert_allclose(loss(params, state), ce(params), rtol=1e-6)   # context 0

  state = method.begin_context(params, state, jnp.int32(1))
  # At the snapshot the distillation term is the teacher's entropy on head 0, and its
  # gradient vanishes (the soft cross-entropy is minimal where student = teacher).
  p_old = jax.nn.softmax(apply_fn(params, batch.x)[:, :2] / 2.0)
  entropy = -(p_old * jnp.log(p_old)).sum(-1).mean()
  np.testing.assert_allclose(loss(params, state) - ce(params), entropy, rtol=1e-5)
  kd_grad = jax.grad(lambda p: loss(p, state) - ce(p))(params)
  chex.assert_trees_all_close(kd_grad, jax.tree.map(jnp.zeros_like, params), atol=1e-6)
  # Moving the network away from the snapshot makes the term grow.
  moved = jax.tree.map(lambda p: p + 0.2 * jnp.sign(p), params)
  assert loss(moved, state) - ce(moved) > entropy + 1e-3
  # Changing only the current head's outputs leaves the distillation term unchanged.
  head_only = jax.tree.map(lambda p: p, params)
  head_only["head"]["kernel"] = params["head"]["kernel"].at[:, 2:].add(1.0)
  np.testing.assert_allclose(loss(head_only, state) - ce(head_only), entropy, rtol=1e-5)
