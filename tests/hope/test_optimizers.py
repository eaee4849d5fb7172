"""hope.optimizers: known answers against NumPy recurrences, optax composition, multi_frequency."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from hope import optimizers as H

LR, STEPS = 0.1, 5
RNG = np.random.default_rng(0)
PARAMS = {"a": RNG.normal(size=(3, 4)).astype(np.float32),
          "b": {"c": RNG.normal(size=(5, 2)).astype(np.float32)}}
GRADS = [jax.tree.map(lambda p: RNG.normal(size=p.shape).astype(np.float32), PARAMS)
         for _ in range(2 * STEPS)]
MEAN_GRADS = [jax.tree.map(lambda a, b: (a + b) / 2, GRADS[2 * i], GRADS[2 * i + 1])
              for i in range(STEPS)]




def np_orthogonalize(x, steps=5, coeffs=(3.4445, -4.7750, 2.0315), eps=1e-7):
  tall = x.shape[0] > x.shape[1]
  y = x.T if tall else x
  y = y / (np.linalg.norm(y) + eps)
  for _ in range(steps):
    a = y @ y.T
    y = coeffs[0] * y + (coeffs[1] * a + coeffs[2] * a @ a) @ y
  return y.T if tall else y


def np_silu(z):
  return z / (1 + np.exp(-z))


# Hand-written recurrences: each takes (grads [steps], params, init state) for ONE leaf and
# returns the updates; params move by the updates.
def np_preconditioned(gs, w, state, b2=0.999, decay=0.9):
  m, v, out = np.zeros_like(w), np.zeros_like(w), []
  for t, g in enumerate(gs, 1):
    v = b2 * v + (1 - b2) * g * g
    m = decay * m - LR * g / (np.sqrt(v / (1 - b2 ** t)) + 1e-8)
    out.append(m)
  return out


def np_delta(gs, w, state, decay=0.9, beta=0.5):
  m, out = np.zeros_like(w), []
  for g in gs:
    k = g / np.linalg.norm(g)
    m = decay * m - beta * k * np.sum(k * m) - LR * g
    out.append(m)
  return out


def np_deep(gs, w, state, inner_lr=0.1, decay=0.9):
  a, b = (np.asarray(x, np.float64) for x in state)
  out = []
  for g in gs:
    z = g @ a
    s = np_silu(z)
    r = s @ b - g
    sig = 1 / (1 + np.exp(-z))
    da = g.T @ ((r @ b.T) * sig * (1 + z * (1 - sig)))
    db = s.T @ r
    a, b = decay * a - inner_lr * da, decay * b - inner_lr * db
    out.append(-LR * np_silu(g @ a) @ b)
  return out


def np_muon(gs, w, state, beta=0.9):
  m, out = np.zeros_like(w), []
  for g in gs:
    m = beta * m + g
    out.append(-LR * np_orthogonalize(m))
  return out


def np_dgd(gs, w, state, retain=0.95):
  out = []
  for g in gs:
    new = retain * w - LR * g @ (g.T @ w) / np.sum(g * g) - LR * g
    out.append(new - w)
    w = new
  return out


def np_m3(gs, w, state, b1=0.9, b2=0.99, b3=0.8, alpha=0.5, every=2):
  m1, m2, v, window, o2 = (np.zeros_like(w) for _ in range(5))
  out = []
  for t, g in enumerate(gs, 1):
    m1, v, window = b1 * m1 + g, b2 * v + (1 - b2) * g * g, window + g
    if t % every == 0:
      m2, window = b3 * m2 + window, np.zeros_like(w)
      o2 = np_orthogonalize(m2)
    out.append(-LR * (np_orthogonalize(m1) + alpha * o2) / (np.sqrt(v / (1 - b2 ** t)) + 1e-8))
  return out


# name: (factory taking learning_rate first, NumPy recurrence, static args for inject_hyperparams)
RULES = {
    "preconditioned_momentum": (functools.partial(H.preconditioned_momentum, decay=0.9),
                                np_preconditioned, ()),
    "delta_momentum": (functools.partial(H.delta_momentum, decay=0.9, beta=0.5), np_delta, ()),
    "deep_momentum": (functools.partial(H.deep_momentum, inner_lr=0.1, decay=0.9, hidden=3),
                      np_deep, ("hidden", "seed")),
    "muon": (functools.partial(H.muon, momentum=0.9), np_muon, ("steps",)),
    "delta_gradient_descent": (functools.partial(H.delta_gradient_descent, retain=0.95),
                               np_dgd, ()),
    "m3": (functools.partial(H.m3, b1=0.9, b2=0.99, b3=0.8, alpha=0.5, slow_every=2),
           np_m3, ("slow_every", "ns_steps")),
}


def run_together(*runs, params=PARAMS):
  """[(tx, grads)] -> each tx's updates over its grads (params moved by each update), all in
  one jit with a lax.scan per tx: one compile however many wrappers are checked."""
  def scan(tx, grads):
    def body(carry, g):
      p, state = carry
      u, state = tx.update(g, state, p)
      return (optax.apply_updates(p, u), state), u
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
    return jax.lax.scan(body, (params, tx.init(params)), stacked)[1]

  outs = jax.jit(lambda: [scan(tx, grads) for tx, grads in runs])()
  return [[jax.tree.map(lambda x: x[t], out) for t in range(len(grads))]
          for out, (_, grads) in zip(outs, runs)]


def expected(name, grads):
  factory, recurrence, _ = RULES[name]
  state = factory(LR).init(PARAMS)
  leaves, treedef = jax.tree.flatten(PARAMS)
  per_leaf = []
  for i, w in enumerate(leaves):
    leaf_state = state.memory["a" if i == 0 else "b"] if name == "deep_momentum" else None
    if name == "deep_momentum" and i == 1:
      leaf_state = state.memory["b"]["c"]
    per_leaf.append(recurrence([np.asarray(jax.tree.leaves(g)[i], np.float64) for g in grads],
                               np.asarray(w, np.float64), leaf_state))
  return [jax.tree.unflatten(treedef, [p[t] for p in per_leaf]) for t in range(len(grads))]


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_matches_numpy_recurrence_and_composes(name):
  factory, _, static = RULES[name]
  want = expected(name, GRADS[:STEPS])
  labels = lambda p: jax.tree.map(lambda _: "rule", p)
  wrapped = {
      "alone": factory(LR),
      "chain": optax.chain(optax.identity(), factory(LR)),
      "partition": optax.partition({"rule": factory(LR)}, labels),
      "inject_hyperparams": optax.inject_hyperparams(factory, static_args=static)(
          learning_rate=LR),
  }
  # MultiSteps(k=2): every second micro-step applies the rule to the mean of the pair.
  multi_steps = optax.MultiSteps(factory(LR), every_k_schedule=2).gradient_transformation()
  *outs, multi = run_together(*[(tx, GRADS[:STEPS]) for tx in wrapped.values()],
                              (multi_steps, GRADS))
  for how, out in zip(wrapped, outs):
    chex.assert_trees_all_close(out, want, atol=2e-5, rtol=2e-4,
                                custom_message=f"{name} via {how}")
  chex.assert_trees_all_close(multi[1::2], expected(name, MEAN_GRADS), atol=2e-5, rtol=2e-4)
  chex.assert_trees_all_close(multi[0::2], [jax.tree.map(jnp.zeros_like, PARAMS)] * STEPS)


def test_newton_schulz_matches_optax_muon_iteration():
  """With beta = 0 and no Nesterov, optax.contrib's Muon is NS_5 of the gradient alone."""
  dims = jax.tree.map(lambda _: optax.contrib.MuonDimensionNumbers(0, 1), PARAMS)
  theirs = optax.contrib.scale_by_muon(beta=0.0, nesterov=False, weight_dimension_numbers=dims)
  ours, theirs = run_together((H.newton_schulz(), GRADS[:2]), (theirs, GRADS[:2]))
  chex.assert_trees_all_close(ours, theirs, atol=1e-5)
  s = np.linalg.svd(np.asarray(ours[0]["a"]), compute_uv=False)
  assert np.all((s > 0.65) & (s < 1.25)), s


def test_gated_titans_rule_is_momentum_with_decay():
  """titans_rule(): S = eta S - theta g; update = S - alpha W (eqs. 9-10, 13-14)."""
  tx, w = H.titans_rule(), PARAMS["a"]
  state, s = tx.init(w), np.zeros_like(w)
  for t, g in enumerate(GRADS[:3]):
    theta, eta, alpha = 0.1 * (t + 1), 0.5 + 0.1 * t, 0.05 * t
    u, state = tx.update(g["a"], state, w, learning_rate=theta, momentum=eta, decay=alpha)
    s = eta * s - theta * g["a"]
    np.testing.assert_allclose(u, s - alpha * w, atol=1e-6)
    w = w + u


# multi_frequency -------------------------------------------------------------------------

LEVELS = {"fast": 1, "mid": 2, "slow": 4, "frozen": None}
MF_PARAMS = {name: jnp.zeros((2,)) for name in LEVELS}
MF_LABELS = {name: name for name in LEVELS}
MF_GRADS = [{name: jnp.full((2,), float(t + 1) * (i + 1)) for i, name in enumerate(LEVELS)}
            for t in range(8)]


@pytest.mark.parametrize("accumulate", ["sum", "mean"])
def test_multi_frequency_updates_each_group_at_its_steps(accumulate):
  tx = H.multi_frequency({name: optax.sgd(1.0) for name in LEVELS}, MF_LABELS, LEVELS, accumulate)
  updates, = run_together((tx, MF_GRADS), params=MF_PARAMS)
  for name, k in LEVELS.items():
    for t, u in enumerate(updates):
      if k is None or (t + 1) % k:
        want = 0.0
      else:
        window = sum(float(g[name][0]) for g in MF_GRADS[t + 1 - k:t + 1])
        want = -window / (k if accumulate == "mean" else 1)
      np.testing.assert_allclose(u[name], want, err_msg=f"{name} at step {t + 1}")
  state = tx.init(MF_PARAMS)
  assert "frozen" not in state["levels"] and "accumulated" not in state["levels"]["fast"]
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def test_multi_frequency_state_restores_mid_cycle_with_orbax(tmp_path):
  rules = {"fast": optax.adam(0.1), "mid": optax.sgd(0.1, momentum=0.9),
           "slow": H.preconditioned_momentum(0.1), "frozen": optax.sgd(1.0)}
  tx = H.multi_frequency(rules, MF_LABELS, LEVELS)
  update = jax.jit(tx.update)
  state, params = tx.init(MF_PARAMS), MF_PARAMS
  for g in MF_GRADS[:3]:  # step 3: the slow level is three gradients into its window of 4
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "opt", state)
    checkpointer.wait_until_finished()
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = checkpointer.restore(tmp_path / "opt", target)
  chex.assert_trees_all_equal(restored, state)
  both = []
  for s in (state, restored):
    p, trail = params, []
    for g in MF_GRADS[3:]:
      u, s = update(g, s, p)
      p = optax.apply_updates(p, u)
      trail.append(p)
    both.append(trail)
  chex.assert_trees_all_equal(*both)
  assert float(both[0][0]["slow"][0]) != float(params["slow"][0])  # step 4 moved "slow"


# bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("every, labels, match", [
    ({"fast": 0, "slow": 1}, None, r"every\['fast'\] must be a positive integer"),
    ({"fast": -2, "slow": 1}, None, r"every\['fast'\]"),
    ({"fast": 1}, None, r"missing \['slow'\]"),
    ({"fast": 1, "slow": 1, "extra": 2}, None, r"unknown \['extra'\]"),
    ({"fast": 1, "slow": 1}, {"a": "fast"}, r"parameters without a level \['b/c'\]"),
    ({"fast": 1, "slow": 1}, {"a": "fast", "b": {"c": "slow"}, "z": "slow"},
     r"labels for parameters that do not exist \['z'\]"),
    ({"fast": 1, "slow": 1}, {"a": "fast", "b": {"c": "medium"}}, r"'b/c': 'medium'"),
    ({"fast": 1, "slow": 1}, {"a": "fast", "b": {"c": "fast"}}, r"levels \['slow'\].*no param"),
])
def test_multi_frequency_rejects_bad_groups(every, labels, match):
  labels = labels or {"a": "fast", "b": {"c": "slow"}}
  rules = {"fast": optax.sgd(1.0), "slow": optax.sgd(1.0)}
  with pytest.raises(ValueError, match=match):
    H.multi_frequency(rules, labels, every).init(PARAMS)


@pytest.mark.parametrize("make", [lambda: H.delta_gradient_descent(0.1), lambda: H.m3(0.1),
                                  H.newton_schulz, lambda: H.muon(0.1)])
def test_matrix_rules_reject_vectors_naming_the_parameter(make):
  with pytest.raises(ValueError, match=r"2-D matrices only.*b/bias \(4,\)"):
    make().init({"a": jnp.zeros((2, 2)), "b": {"bias": jnp.zeros((4,))}})


def test_dgd_needs_params():
  tx = H.delta_gradient_descent(0.1)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(PARAMS, tx.init(PARAMS))
