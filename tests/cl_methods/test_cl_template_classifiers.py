"""iCaRL (herding, nearest mean of exemplars) and the generative classifier."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cl_methods import losses
from cl_methods import method as method_lib
from cl_methods import template_classifiers
from cl_methods import train_step


def test_nearest_mean_classification():
  means = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  feats = jnp.array([[3.0, 0.2], [0.1, 2.0], [-5.0, -1.0], [-2.0, 0.1]])
  scores = template_classifiers.nearest_mean_scores(feats, means, jnp.array([True, True, True]))
  assert np.argmax(scores, 1).tolist() == [0, 1, 2, 2]
  # A class without exemplars is never predicted.
  scores = template_classifiers.nearest_mean_scores(feats, means, jnp.array([True, True, False]))
  assert np.argmax(scores, 1).tolist() == [0, 1, 1, 1]
  assert float(scores[:, 2].max()) == np.float32(losses.MASKED_LOGIT)


def test_herding_approximates_the_class_mean():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(60, 5)) + np.array([2.0, 0, 0, 0, 0])
  f = f / np.linalg.norm(f, axis=1, keepdims=True)
  candidates = np.arange(60) % 3 == 0                  # 20 candidates
  index, count = jax.jit(template_classifiers.herding, static_argnums=2)(
      jnp.asarray(f), jnp.asarray(candidates), 5)
  index = np.asarray(index)
  assert int(count) == 5 and len(set(index.tolist())) == 5 and candidates[index].all()
  # Greedy reference (Rebuffi et al. 2017, Alg. 4).
  mu = f[candidates].mean(0)
  chosen = []
  for k in range(5):
    dist = np.linalg.norm(mu - (f[chosen].sum(0) + f) / (k + 1), axis=1)
    dist[~candidates] = np.inf
    dist[chosen] = np.inf
    chosen.append(int(np.argmin(dist)))
  assert index.tolist() == chosen
  herded_error = np.linalg.norm(f[index].mean(0) - mu)
  random_errors = [np.linalg.norm(f[rng.choice(np.flatnonzero(candidates), 5, replace=False)]
                                  .mean(0) - mu) for _ in range(200)]
  assert herded_error < np.percentile(random_errors, 25)
  index, count = template_classifiers.herding(jnp.asarray(f), jnp.asarray(np.arange(60) < 3), 5)
  assert int(count) == 3 and sorted(np.asarray(index)[:3].tolist()) == [0, 1, 2]


def test_icarl_stores_exemplars_and_classifies_by_their_means(make_batch):
  def features_fn(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"]

  def apply_fn(p, x):
    return features_fn(p, x)

  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 10)
  x = np.eye(4)[y] * 3.0 + 0.3 * rng.normal(size=(40, 4))     # 4 classes in 4-d
  params = {"w": jnp.eye(4)}
  context_units = np.array([[0, 1], [2, 3]])
  method = template_classifiers.icarl(apply_fn, features_fn, exemplars_per_class=4,
                                      context_units=context_units)
  data = make_batch(x, y, 4)
  state = method.init_state(params, data)
  end = jax.jit(method.end_context)
  begin = jax.jit(method.begin_context)
  for c in range(2):
    state = begin(params, state, jnp.int32(c))
    ours = data._replace(valid=jnp.isin(data.y, jnp.asarray(context_units[c])))
    _, state = end(params, state, ours, jnp.int32(c), None)
    assert np.asarray(state.count).tolist() == [4, 4] + ([4, 4] if c else [0, 0])
  for u in range(4):
    stored = np.asarray(state.exemplars[u])
    assert all(np.any(np.all(np.isclose(x[y == u], s), axis=1)) for s in stored)
  feats = np.asarray(state.exemplars).reshape(16, 4)
  feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
  mean0 = feats[:4].mean(0)
  np.testing.assert_allclose(state.means[0], mean0 / np.linalg.norm(mean0), rtol=1e-5)
  pred = np.argmax(jax.jit(method.predict)(params, state, data), 1)
  assert (pred == y).mean() > 0.95


def test_generative_classifier_trains_one_model_per_class(make_batch):
  method = template_classifiers.generative_classifier(hidden=8, latent=2,
                                                      importance_samples=4, decoder_std=0.3)
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 32)
  x = np.eye(3, 4)[y] * 2.0 + 0.2 * rng.normal(size=(96, 4))
  batch = make_batch(x, y, 3)
  params = method.init_params(None, batch, jax.random.key(0))
  state = method.init_state(params, batch)
  tx = optax.adam(1e-2)
  step_fn = jax.jit(train_step.make_train_step(method, tx))
  opt_state = tx.init(params)
  info = method_lib.StepInfo(jnp.int32(0), jnp.int32(0), jnp.int32(0))
  first_two = batch._replace(valid=batch.y < 2)
  for i in range(60):
    params, opt_state, state, _ = step_fn(params, opt_state, state, first_two, info,
                                          jax.random.key(i))
  # The third class had no data: its model is untouched and it is never predicted.
  init = method.init_params(None, batch, jax.random.key(0))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(init)):
    np.testing.assert_array_equal(np.asarray(a)[2], np.asarray(b)[2])
  assert np.asarray(state.trained).tolist() == [True, True, False]
  pred = np.argmax(jax.jit(method.predict)(params, state, batch), 1)
  assert (pred[y < 2] == y[y < 2]).mean() > 0.95 and (pred < 2).all()
