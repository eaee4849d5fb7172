"""Template-based classification: iCaRL (nearest mean of exemplars) and a generative
classifier (one variational autoencoder per class).

* iCaRL (Rebuffi et al. 2017, "iCaRL: incremental classifier and representation learning"):
  - representation learning (Alg. 3): train on the current data plus the stored exemplars
    with a sigmoid binary cross-entropy over all classes seen so far, whose targets are
    the one-hot labels on the current context's classes and the previous network's
    sigmoid outputs on the older classes (distillation);
  - exemplar selection by herding (Alg. 4): for class y with mean mu of the L2-normalised
    features phi, the k-th exemplar is argmin_x || mu - (phi(x) + sum_{j<k} p_j) / k ||;
    m exemplars per class are kept (a fixed per-class budget, as in van de Ven et al.);
  - nearest-mean-of-exemplars classification (Alg. 1): y* = argmin_y ||phi(x) - mu_y||
    with mu_y the normalised mean feature of class y's exemplars under the current network.
  Features come from `features_fn(params, x)` (e.g. the last hidden layer).
* Generative classifier (van de Ven, Li & Tolias 2021, "Class-incremental learning with
  generative classifiers", sec. 3): one small VAE per output unit, trained only on that
  class's examples (ELBO, Kingma & Welling 2014, eq. 3); a class's VAE is never updated
  after its data is gone, so nothing is forgotten. Prediction is
  argmax_y log p(x | y), estimated by importance sampling with S samples from the encoder:
      log p(x|y) ~ logsumexp_s [log p(x|z_s) + log N(z_s; 0, I) - log q(z_s|x)] - log S.
  The decoder is Gaussian with a fixed standard deviation `decoder_std` (in input units;
  the benchmark inputs are scaled to about unit range). It ignores the network it is given
  and trains its own parameters.

Both classify only among the classes they have templates (exemplars or VAEs) for.
"""
import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from cl_methods import losses
from cl_methods import method as method_lib

DOMAIN_REASON = ("a Domain-IL label spans all contexts, so its template would be rebuilt from "
           "one context after another")
ICARL_BOUNDARY_REASON = ("it selects exemplars and distils the previous network at context "
                         "boundaries")


def _normalize(f):
  return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def herding(features, candidates, m: int):
  """Herding selection (iCaRL Alg. 4) of up to m rows among `candidates`.

  Args:
    features: (N, D) L2-normalised features.
    candidates: (N,) bool.
  Returns:
    (index (m,) int32, count): the first `count` = min(m, #candidates) entries are valid.
  """
  chex.assert_rank([features, candidates], [2, 1])
  w = candidates.astype(features.dtype)
  n_cand = candidates.sum()
  mu = (features * w[:, None]).sum(0) / jnp.maximum(w.sum(), 1.0)

  def body(k, carry):
    chosen_sum, taken, index = carry
    dist = jnp.linalg.norm(mu[None] - (chosen_sum[None] + features) / (k + 1), axis=-1)
    dist = jnp.where(candidates & ~taken, dist, jnp.inf)
    i = jnp.argmin(dist)
    ok = k < n_cand
    chosen_sum = jnp.where(ok, chosen_sum + features[i], chosen_sum)
    taken = taken.at[i].set(taken[i] | ok)
    index = index.at[k].set(jnp.where(ok, i, 0))
    return chosen_sum, taken, index

  init = (jnp.zeros_like(mu), jnp.zeros(candidates.shape, bool), jnp.zeros((m,), jnp.int32))
  _, _, index = jax.lax.fori_loop(0, m, body, init)
  return index, jnp.minimum(n_cand, m)


def nearest_mean_scores(features, means, available):
  """Scores -||phi(x) - mu_y||^2 (phi normalised); classes without a mean get MASKED_LOGIT."""
  d = ((_normalize(features)[:, None, :] - means[None]) ** 2).sum(-1)
  return jnp.where(available[None], -d, losses.MASKED_LOGIT)


class ICaRLState(NamedTuple):
  exemplars: jax.Array   # (n_units, m, *input_shape)
  count: jax.Array       # (n_units,) int32 exemplars stored per class
  means: jax.Array       # (n_units, D) normalised class means of exemplar features
  seen: jax.Array        # (n_units,) bool classes of finished contexts
  current: jax.Array     # (n_units,) bool classes of the context being trained
  old_params: Any
  has_old: jax.Array     # bool


def icarl(apply_fn, features_fn, *, exemplars_per_class: int,
          context_units) -> method_lib.ContinualMethod:
  """iCaRL; `context_units` (T, K) are the output units of each context's classes."""
  context_units = jnp.asarray(context_units)
  m = exemplars_per_class
  if m < 1:
    raise ValueError(f"exemplars_per_class must be >= 1, got {m}")

  def init_state(params, example):
    n_units = example.mask.shape[-1]
    dim = features_fn(params, example.x).shape[-1]
    return ICaRLState(
        exemplars=jnp.zeros((n_units, m) + example.x.shape[1:], example.x.dtype),
        count=jnp.zeros((n_units,), jnp.int32), means=jnp.zeros((n_units, dim)),
        seen=jnp.zeros((n_units,), bool), current=jnp.zeros((n_units,), bool),
        old_params=params, has_old=jnp.zeros((), bool))

  def begin_context(params, state, context):
    current = jnp.zeros_like(state.seen).at[context_units[context]].set(True)
    return state._replace(current=current, old_params=params, has_old=state.seen.any())

  def replay_batch(state, n, key):
    n_units = state.count.shape[0]
    filled = (jnp.arange(m)[None, :] < state.count[:, None]).ravel()
    flat = jax.random.categorical(key, jnp.where(filled, 0.0, -jnp.inf), shape=(n,))
    x = state.exemplars.reshape((n_units * m,) + state.exemplars.shape[2:])[flat]
    return x, (flat // m).astype(jnp.int32), jnp.broadcast_to(filled.any(), (n,))

  def loss(params, state, batch, key):
    rx, ry, rvalid = replay_batch(state, batch.x.shape[0], key)
    x = jnp.concatenate([batch.x, rx])
    y = jnp.concatenate([batch.y, ry])
    valid = jnp.concatenate([batch.valid, rvalid])
    logits = apply_fn(params, x)
    old = jax.nn.sigmoid(jax.lax.stop_gradient(apply_fn(state.old_params, x)))
    onehot = jax.nn.one_hot(y, logits.shape[-1])
    target = jnp.where(state.current[None], onehot, old)
    active = state.seen | state.current
    bce = optax.sigmoid_binary_cross_entropy(logits, target)
    per_example = jnp.where(active[None], bce, 0.0).sum(-1)
    return losses.valid_mean(per_example, valid), {"logits": logits[: batch.x.shape[0]]}

  def class_means(params, exemplars, count):
    n_units = count.shape[0]
    f = _normalize(features_fn(params, exemplars.reshape((n_units * m,) + exemplars.shape[2:])))
    f = f.reshape(n_units, m, -1)
    w = (jnp.arange(m)[None, :] < count[:, None]).astype(f.dtype)
    return _normalize((f * w[..., None]).sum(1) / jnp.maximum(w.sum(1, keepdims=True), 1.0))

  def end_context(params, state, data, context, key):
    del key
    feats = _normalize(features_fn(params, data.x))
    units = context_units[context]
    index, count = jax.vmap(lambda u: herding(feats, data.valid & (data.y == u), m))(units)
    exemplars = state.exemplars.at[units].set(data.x[index])
    count_all = state.count.at[units].set(count)
    return params, state._replace(
        exemplars=exemplars, count=count_all, seen=state.seen | state.current,
        means=class_means(params, exemplars, count_all))

  def predict(params, state, batch):
    return nearest_mean_scores(features_fn(params, batch.x), state.means, state.count > 0)

  return method_lib.ContinualMethod(
      name="icarl", family="template-based", loss=loss, predict=predict,
      init_state=init_state, begin_context=begin_context, end_context=end_context,
      unsupported={"domain": DOMAIN_REASON}, needs_boundaries=ICARL_BOUNDARY_REASON)


def _dense_init(key, fan_in, fan_out, n_units):
  return jax.random.normal(key, (n_units, fan_in, fan_out)) / jnp.sqrt(fan_in)


def _vae_encode(p, x):
  h = jax.nn.relu(x @ p["enc_w"] + p["enc_b"])
  return h @ p["mu_w"] + p["mu_b"], h @ p["lv_w"] + p["lv_b"]


def _vae_log_lik(p, x, z, std):
  """log N(x; decoder(z), std^2 I), summed over dimensions."""
  h = jax.nn.relu(z @ p["dec_w"] + p["dec_b"])
  mean = h @ p["out_w"] + p["out_b"]
  return -0.5 * jnp.sum(((x - mean) / std) ** 2 + 2 * jnp.log(std) + jnp.log(2 * jnp.pi),
                        axis=-1)


def _std_normal_log_pdf(z):
  return -0.5 * jnp.sum(z ** 2 + jnp.log(2 * jnp.pi), axis=-1)


def vae_elbo(p, x, key, std):
  """Single-sample ELBO of x (B, D) under one VAE's parameters p."""
  mu, lv = _vae_encode(p, x)
  z = mu + jnp.exp(0.5 * lv) * jax.random.normal(key, mu.shape)
  kl = 0.5 * jnp.sum(jnp.exp(lv) + mu ** 2 - 1.0 - lv, axis=-1)
  return _vae_log_lik(p, x, z, std) - kl


def vae_log_likelihood(p, x, key, n_samples: int, std):
  """Importance-sampled estimate of log p(x) (B,) with n_samples encoder samples."""
  mu, lv = _vae_encode(p, x)
  eps = jax.random.normal(key, (n_samples,) + mu.shape)
  z = mu[None] + jnp.exp(0.5 * lv)[None] * eps
  log_q = -0.5 * jnp.sum(eps ** 2 + lv[None] + jnp.log(2 * jnp.pi), axis=-1)
  log_w = jax.vmap(lambda zs: _vae_log_lik(p, x, zs, std))(z) + _std_normal_log_pdf(z) - log_q
  return jax.nn.logsumexp(log_w, axis=0) - jnp.log(n_samples)


class GenerativeClassifierState(NamedTuple):
  trained: jax.Array    # (n_units,) bool classes whose VAE has seen data
  eval_key: jax.Array


def generative_classifier(*, hidden: int, latent: int, importance_samples: int,
                          decoder_std: float) -> method_lib.ContinualMethod:
  """One VAE per output unit (stacked along a leading axis); see module docstring."""

  def init_params(model_params, example, key):
    del model_params
    d = math.prod(example.x.shape[1:])
    u = example.mask.shape[-1]
    k = jax.random.split(key, 5)
    return {
        "enc_w": _dense_init(k[0], d, hidden, u), "enc_b": jnp.zeros((u, hidden)),
        "mu_w": _dense_init(k[1], hidden, latent, u), "mu_b": jnp.zeros((u, latent)),
        "lv_w": _dense_init(k[2], hidden, latent, u) * 0.1, "lv_b": jnp.zeros((u, latent)),
        "dec_w": _dense_init(k[3], latent, hidden, u), "dec_b": jnp.zeros((u, hidden)),
        "out_w": _dense_init(k[4], hidden, d, u), "out_b": jnp.zeros((u, d)),
    }

  def init_state(params, example):
    del example
    n_units = params["out_b"].shape[0]
    return GenerativeClassifierState(trained=jnp.zeros((n_units,), bool),
                                     eval_key=jax.random.key(0))

  def flat(x):
    return x.reshape(x.shape[0], -1)

  def loss(params, state, batch, key):
    del state
    x = flat(batch.x)
    n_units = params["out_b"].shape[0]
    keys = jax.random.split(key, n_units)
    elbo = jax.vmap(vae_elbo, in_axes=(0, None, 0, None))(params, x, keys, decoder_std)
    mine = jnp.take_along_axis(elbo, batch.y[None], axis=0)[0]
    return -losses.valid_mean(mine, batch.valid) / x.shape[-1], {}

  def after_update(old_params, new_params, grads, state, batch, aux, info, key):
    del grads, aux, info, key
    present = jnp.zeros_like(state.trained).at[batch.y].max(batch.valid)

    def keep(old, new):
      return jnp.where(present.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

    return (jax.tree.map(keep, old_params, new_params),
            state._replace(trained=state.trained | present))

  def predict(params, state, batch):
    x = flat(batch.x)
    n_units = params["out_b"].shape[0]
    keys = jax.random.split(state.eval_key, n_units)
    ll = jax.vmap(vae_log_likelihood, in_axes=(0, None, 0, None, None))(
        params, x, keys, importance_samples, decoder_std)                   # (U, B)
    return jnp.where(state.trained[:, None], ll, losses.MASKED_LOGIT).T

  return method_lib.ContinualMethod(
      name="generative_classifier", family="template-based", loss=loss, predict=predict,
      init_state=init_state, after_update=after_update, init_params=init_params,
      unsupported={"domain": DOMAIN_REASON})
