"""EWC, online EWC, SI and MAS: importances against brute force, penalties by importance."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_methods import losses
from cl_methods import pytree_math
from cl_methods import regularization


@pytest.fixture(scope="module")
def data(make_batch):
  rng = np.random.default_rng(0)
  mask = np.array([[1, 1, 0, 0]] * 3 + [[1, 1, 1, 1]] * 2, bool)   # two masks, as in Task-IL
  return make_batch(rng.normal(size=(5, 6)), [0, 1, 0, 2, 3], 4, mask=mask,
                    valid=[True, True, True, True, False])


def test_exact_fisher_matches_brute_force(tiny_mlp, data):
  apply_fn, params = tiny_mlp.apply_fn, tiny_mlp.params
  fisher = jax.jit(lambda p, d: regularization.diagonal_fisher(apply_fn, p, d))(params, data)
  expect = pytree_math.zeros_like(params)
  n_valid = 0
  for i in range(5):
    if not data.valid[i]:
      continue
    n_valid += 1
    x, mask = data.x[i:i + 1], data.mask[i]

    def log_prob(p, y):
      return jax.nn.log_softmax(losses.masked_logits(apply_fn(p, x)[0], mask))[y]

    probs = jnp.exp(jax.nn.log_softmax(losses.masked_logits(apply_fn(params, x)[0], mask)))
    for y in range(4):
      if mask[y]:
        g = jax.grad(log_prob)(params, y)
        expect = jax.tree.map(lambda e, gi: e + probs[y] * gi ** 2, expect, g)
  expect = jax.tree.map(lambda e: e / n_valid, expect)
  chex.assert_trees_all_close(fisher, expect, rtol=1e-5, atol=1e-8)
  assert sum(float(f.sum()) for f in jax.tree.leaves(fisher)) > 0


def test_ewc_penalty_weights_distance_by_fisher(tiny_mlp, data, make_batch):
  apply_fn, params = tiny_mlp.apply_fn, tiny_mlp.params
  lam = 100.0
  method = regularization.ewc(apply_fn, strength=lam)
  state = method.init_state(params, data)
  only_first_head = data._replace(mask=jnp.broadcast_to(data.mask[0], data.mask.shape))
  _, state = jax.jit(method.end_context)(params, state, only_first_head, jnp.int32(0),
                                         jax.random.key(0))
  fisher = state.fisher
  chex.assert_trees_all_close(state.anchor, params)
  assert float(state.offset) == 0.0
  # Units 2 and 3 never enter the softmax: their head weights have zero Fisher ...
  head_f = np.asarray(fisher["head"]["kernel"])
  assert np.all(head_f[:, 2:] == 0) and np.all(head_f[:, :2] > 0)
  batch = make_batch(np.ones((2, 6)), [0, 1], 4)
  loss = jax.jit(lambda p: method.loss(p, state, batch, None)[0])

  def ce(p):
    return losses.cross_entropy(apply_fn(p, batch.x), batch.y, batch.mask, batch.valid)

  rng = np.random.default_rng(1)
  delta = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), params)
  moved = jax.tree.map(jnp.add, params, delta)
  expect = 0.5 * lam * sum(float((f * d ** 2).sum()) for f, d in
                           zip(jax.tree.leaves(fisher), jax.tree.leaves(delta)))
  np.testing.assert_allclose(loss(moved) - ce(moved), expect, rtol=1e-4)
  # ... so moving them costs nothing, while moving a weight with Fisher F costs lam/2 F d^2.
  free = jax.tree.map(lambda a: a, params)
  free["head"]["kernel"] = params["head"]["kernel"].at[:, 2:].add(5.0)
  np.testing.assert_allclose(loss(free) - ce(free), 0.0, atol=1e-6)
  pinned = jax.tree.map(lambda a: a, params)
  pinned["head"]["kernel"] = params["head"]["kernel"].at[0, 0].add(0.5)
  np.testing.assert_allclose(loss(pinned) - ce(pinned), 0.5 * lam * head_f[0, 0] * 0.25,
                             rtol=1e-4)


def test_offline_ewc_keeps_one_term_per_context_online_ewc_one_decayed(tiny_mlp, data):
  """Offline: the merged penalty equals sum_k 1/2 F_k (theta - theta*_k)^2 over the finished
  contexts, in value and gradient; online: one gamma-decayed Fisher at the latest anchor."""
  apply_fn, params = tiny_mlp.apply_fn, tiny_mlp.params
  offline = regularization.ewc(apply_fn, strength=1.0)
  online = regularization.online_ewc(apply_fn, strength=1.0, gamma=0.5)
  anchors = [params, jax.tree.map(lambda a: a + 0.1, params),
             jax.tree.map(lambda a: 0.5 * a - 0.2, params)]
  fisher = jax.jit(lambda p: regularization.diagonal_fisher(apply_fn, p, data))
  fishers = [fisher(p) for p in anchors]
  s_off, s_on = offline.init_state(params, data), online.init_state(params, data)
  end_off, end_on = jax.jit(offline.end_context), jax.jit(online.end_context)
  for c, p in enumerate(anchors):
    _, s_off = end_off(p, s_off, data, jnp.int32(c), None)
    _, s_on = end_on(p, s_on, data, jnp.int32(c), None)
  rng = np.random.default_rng(2)
  theta = jax.tree.map(lambda a: a + jnp.asarray(rng.normal(size=a.shape), a.dtype), params)
  batch = data._replace(valid=jnp.zeros_like(data.valid))   # no examples: the penalty alone

  def by_hand(p):
    return 0.5 * sum(pytree_math.weighted_sq_distance(f, p, a) for f, a in zip(fishers, anchors))

  merged = lambda p: offline.loss(p, s_off, batch, None)[0]
  np.testing.assert_allclose(merged(theta), by_hand(theta), rtol=1e-5)
  chex.assert_trees_all_close(jax.grad(merged)(theta), jax.grad(by_hand)(theta), rtol=1e-4,
                              atol=1e-7)
  chex.assert_trees_all_close(s_on.fisher, jax.tree.map(lambda a, b, c: 0.25 * a + 0.5 * b + c,
                                                        *fishers), rtol=1e-5)
  chex.assert_trees_all_close(s_on.anchor, anchors[-1])


def test_si_path_integral_equals_loss_decrease():
  """With small SGD steps on L = 1/2 sum a_i theta_i^2, sum_i omega_i ~ L(start) - L(end)
  (Zenke et al. 2017, eq. 3) and per parameter omega_i = L_i(start) - L_i(end)."""
  a = jnp.array([1.0, 4.0, 0.25])
  theta0 = {"w": jnp.array([1.0, -1.0, 2.0])}
  method = regularization.synaptic_intelligence(lambda p, x: x, strength=2.0, damping=0.1)
  state = method.init_state(theta0, None)

  def run(theta, state):
    def body(carry, _):
      theta, state = carry
      g = {"w": a * theta["w"]}
      new = {"w": theta["w"] - 1e-3 * g["w"]}
      new, state = method.after_update(theta, new, g, state, None, None, None, None)
      return (new, state), None
    return jax.lax.scan(body, (theta, state), None, length=2000)[0]

  theta, state = jax.jit(run)(theta0, state)
  per_param = 0.5 * a * (theta0["w"] ** 2 - theta["w"] ** 2)
  np.testing.assert_allclose(state.path_integral["w"], per_param, rtol=5e-3)
  _, state = method.end_context(theta, state, None, None, None)
  expect = per_param / ((theta["w"] - theta0["w"]) ** 2 + 0.1)
  np.testing.assert_allclose(state.importance["w"], expect, rtol=5e-3)
  np.testing.assert_allclose(state.anchor["w"], theta["w"])
  assert float(jnp.abs(state.path_integral["w"]).sum()) == 0.0


def test_mas_importance_is_output_norm_sensitivity_of_a_linear_model(make_batch):
  def apply_fn(p, x):
    return x @ p["w"] + p["b"]

  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.array([0.5, -1.0])}
  data = make_batch(rng.normal(size=(4, 3)), [0, 1, 0, 1], 2)
  method = regularization.memory_aware_synapses(apply_fn, strength=3.0)
  state = method.init_state(params, data)
  _, state = method.end_context(params, state, data, None, None)
  f = np.asarray(apply_fn(params, data.x))                       # (4, 2)
  x = np.asarray(data.x)
  # d||f||^2 / dW_ij = 2 x_i f_j and d||f||^2 / db_j = 2 f_j, averaged in absolute value.
  np.testing.assert_allclose(state.importance["w"],
                             np.abs(2 * x[:, :, None] * f[:, None, :]).mean(0), rtol=1e-5)
  np.testing.assert_allclose(state.importance["b"], np.abs(2 * f).mean(0), rtol=1e-5)
  moved = {"w": params["w"] + 0.1, "b": params["b"]}
  penalty = method.loss(moved, state, data, None)[0] - losses.cross_entropy(
      apply_fn(moved, data.x), data.y, data.mask, data.valid)
  np.testing.assert_allclose(penalty, 3.0 * 0.01 * float(state.importance["w"].sum()),
                             rtol=1e-4)
