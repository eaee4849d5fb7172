"""Separate heads, XdG and PackNet."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cl_methods import benchmark_models
from cl_methods import context_specific
from cl_methods import method as method_lib
from cl_methods import train_step


def test_separate_heads_isolate_the_heads(tiny_mlp, make_batch):
  apply_fn, params = tiny_mlp.apply_fn, tiny_mlp.params
  method = context_specific.separate_heads(apply_fn)
  assert method.separate_heads and not method.serves("class") and not method.serves("domain")
  assert "context identity" in method.why_not("class")
  heads = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
  batch = make_batch(np.random.default_rng(0).normal(size=(4, 6)), [2, 3, 3, 2], 4,
                     context=1, mask=heads[1])
  grads = jax.jit(jax.grad(lambda p: method.loss(p, (), batch, None)[0]))(params)
  # Training on context 1 sends no gradient into context 0's head.
  assert np.all(np.asarray(grads["head"]["kernel"])[:, :2] == 0)
  assert np.all(np.asarray(grads["head"]["bias"])[:2] == 0)
  assert np.abs(np.asarray(grads["head"]["kernel"])[:, 2:]).sum() > 0


def test_xdg_gates_a_fixed_fraction_of_units_per_context(make_batch):
  model = benchmark_models.build("mlp", (6,), 4, hidden=(20, 10), seed=0)
  method = context_specific.context_gating(model.apply_fn, gated_layers=model.gated_layers,
                                           n_contexts=3, gate_fraction=0.6, seed=0)
  batch = make_batch(np.random.default_rng(0).normal(size=(3, 6)), [0, 1, 2], 4,
                     context=[0, 1, 2])
  state = method.init_state(model.params, batch)
  g0, g1 = (np.asarray(g) for g in state.gates)
  assert g0.shape == (3, 20) and g1.shape == (3, 10)
  assert (g0.sum(1) == 8).all() and (g1.sum(1) == 4).all()      # 40% of units kept
  assert not np.array_equal(g0[0], g0[1])
  out = jax.jit(method.predict)(model.params, state, batch)

  @jax.jit
  def by_hand(c):
    gated = {"head": model.params["head"], "hidden": {
        0: jax.tree.map(lambda v: v * jnp.asarray(g0)[c], model.params["hidden"][0]),
        1: jax.tree.map(lambda v: v * jnp.asarray(g1)[c], model.params["hidden"][1])}}
    return model.apply_fn(gated, batch.x[c][None])[0]

  for c in range(3):
    np.testing.assert_allclose(out[c], by_hand(c), rtol=1e-5)
  # A context's silenced units get no gradient from its examples.
  grads = jax.jit(jax.grad(lambda p: method.loss(p, state, batch, None)[0]))(model.params)
  k0 = np.asarray(grads["hidden"][0]["kernel"])
  assert np.all(k0[:, (g0 == 0).all(0)] == 0)
  assert np.abs(k0[:, g0.any(0)]).sum() > 0


def test_packnet_freezes_disjoint_weight_sets(tiny_mlp, make_batch):
  apply_fn, params = tiny_mlp.apply_fn, tiny_mlp.params
  steps, prune_step = 12, 8
  method = context_specific.packnet(apply_fn, n_contexts=2, prune_fraction=0.5,
                                    prune_step=prune_step)
  tx = optax.adam(1e-2)
  step_fn = train_step.make_train_step(method, tx)
  rng = np.random.default_rng(0)
  data = [make_batch(rng.normal(size=(8, 6)), rng.integers(0, 4, 8), 4, context=c)
          for c in range(2)]

  @jax.jit
  def train_context(params, opt_state, state, batch, context):
    def body(carry, i):
      p, o, s = carry
      info = method_lib.StepInfo(step=i, step_in_context=i, context=context)
      p, o, s, _ = step_fn(p, o, s, batch, info, jax.random.key(0))
      return (p, o, s), None
    return jax.lax.scan(body, (params, opt_state, state), jnp.arange(steps))[0]

  state = method.init_state(params, data[0])
  opt_state = tx.init(params)
  state = method.begin_context(params, state, 0)
  p0, opt_state, state = train_context(params, opt_state, state, data[0], 0)
  owner0 = jax.tree.map(np.asarray, state.owner)
  kernels = [k for k in jax.tree.leaves(owner0) if k.ndim == 2]
  n = sum(k.size for k in kernels)
  assert sum((k == 0).sum() for k in kernels) == sum(k.size - k.size // 2 for k in kernels)
  # Pruned weights are zero; biases belong to context 0.
  for w, o in zip(jax.tree.leaves(p0), jax.tree.leaves(owner0)):
    assert np.all(np.asarray(w)[o < 0] == 0)
    if o.ndim == 1:
      assert (o == 0).all()
  predict0 = jax.jit(method.predict)(p0, state, data[0])

  state = method.begin_context(p0, state, 1)
  p1, _, state = train_context(p0, opt_state, state, data[1], 1)
  owner1 = jax.tree.map(np.asarray, state.owner)
  for w_before, w_after, o in zip(jax.tree.leaves(p0), jax.tree.leaves(p1),
                                  jax.tree.leaves(owner1)):
    np.testing.assert_array_equal(np.asarray(w_after)[o == 0], np.asarray(w_before)[o == 0])
  # Context 1 took half of the remaining free weights; the two sets are disjoint.
  mine0 = sum(int((o == 0).sum()) for o in jax.tree.leaves(owner1) if o.ndim == 2)
  mine1 = sum(int((o == 1).sum()) for o in jax.tree.leaves(owner1) if o.ndim == 2)
  assert mine0 == sum((k == 0).sum() for k in kernels)
  assert mine1 == sum((k < 0).sum() - (k < 0).sum() // 2 for k in kernels)
  assert mine0 + mine1 <= n
  for a, b in zip(jax.tree.leaves(owner0), jax.tree.leaves(owner1)):
    assert not np.any((a == 0) & (b == 1))
  # Context 0's predictions are bit-identical after training context 1.
  chex.assert_trees_all_equal(jax.jit(method.predict)(p1, state, data[0]), predict0)
  assert not np.allclose(jax.jit(method.predict)(p1, state, data[1]),
                         jax.jit(method.predict)(p0, state, data[1]))
