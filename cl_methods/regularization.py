"""Parameter regularization: EWC, online EWC, SI and MAS.

Each keeps a per-parameter importance and an anchor, and adds a quadratic penalty that
pulls important parameters back to their anchor:

* EWC (Kirkpatrick et al. 2017, eq. 3): after context k, the diagonal Fisher information
      F_k,i = E_x sum_y p(y|x) (d log p(y|x) / d theta_i)^2
  (the *exact* Fisher: expectation over all labels weighted by the model's own predictive
  probabilities, with only the context's active output units in the softmax, as in van de
  Ven et al.'s code; or, with fisher="sampled", its one-sample Monte-Carlo estimate, which
  is what a language model's vocabulary and positions allow), and one penalty term per
  finished context:
      L = CE + lambda/2 sum_k sum_i F_k,i (theta_i - theta*_k,i)^2.
* Online EWC (Schwarz et al. 2018, "Progress & compress", eq. 8): one running Fisher
  F <- gamma F + F_k and the latest anchor: L = CE + lambda/2 sum_i F_i (theta_i - theta*_i)^2.
* SI (Zenke et al. 2017, eqs. 4-5): during a context accumulate the path integral
  omega_i += -g_i * delta theta_i over every update (g: the gradient the optimizer was
  given); at its end Omega_i += omega_i / ((theta_i - theta~_i)^2 + xi), where theta~ are
  the parameters at the context's start; L = CE + c sum_i Omega_i (theta_i - theta~_i)^2.
* MAS (Aljundi et al. 2018, "Memory aware synapses", eqs. 3-5): importance from the
  sensitivity of the squared L2 norm of the (active) outputs,
      Omega_i += 1/N sum_x | d ||f(x)||_2^2 / d theta_i |,
  computed per example without labels; L = CE + lambda sum_i Omega_i (theta_i - theta*_i)^2.

Importances are computed at context boundaries on up to N examples of the finished context
(`end_context`), from per-example gradients: vectorised over chunks of examples on
accelerators, one example at a time on CPU, where XLA runs the batched products of
vectorised per-example gradients several times slower (the sampled Fisher of an MLP(400,
400) on 512 examples: 0.027 s one at a time, 0.09 s in chunks of 22).
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from cl_methods import losses
from cl_methods import method as method_lib
from cl_methods import pytree_math

BOUNDARY_REASON = "it consolidates importances at context boundaries"
_CHUNK_FLOATS = 1 << 22   # per-example gradients held at once: chunk * params


def _chunk_size(params) -> int:
  """Examples vectorised at once: 1 on CPU (see the module doc), else as many as keep
  chunk * params under _CHUNK_FLOATS, at most 64."""
  if jax.default_backend() == "cpu":
    return 1
  n_params = sum(a.size for a in jax.tree.leaves(params))
  return int(max(1, min(64, _CHUNK_FLOATS // max(1, n_params))))


def per_example_mean(fn, params, data, chunk: int, key=None):
  """Mean over the valid examples of fn(params, x_i, mask_i, key_i), a params-shaped pytree
  (key_i: example i's key, split from `key`; None when `key` is None).

  Examples are processed `chunk` at a time (vmap inside lax.scan) to bound memory.
  """
  n = data.x.shape[0]
  pad = (-n) % chunk
  keys = (jnp.zeros((n,), jnp.int32) if key is None
          else jax.random.key_data(jax.random.split(key, n)))

  def padded(a):
    a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])
    return a.reshape((-1, chunk) + a.shape[1:])

  def body(total, chunk_data):
    x, mask, ok, k = chunk_data
    k = None if key is None else jax.random.wrap_key_data(k)
    values = jax.vmap(fn, in_axes=(None, 0, 0, 0 if key is not None else None))(
        params, x, mask, k)
    w = ok.astype(jnp.float32)
    return jax.tree.map(lambda t, v: t + jnp.tensordot(w, v, axes=1), total, values), None

  total, _ = jax.lax.scan(body, pytree_math.zeros_like(params),
                          (padded(data.x), padded(data.mask), padded(data.valid), padded(keys)))
  count = jnp.maximum(data.valid.sum(), 1).astype(jnp.float32)
  return jax.tree.map(lambda t: t / count, total)


FISHER_ESTIMATES = ("exact", "sampled")


def diagonal_fisher(apply_fn, params, data, *, estimate: str = "exact", key=None):
  """Diagonal Fisher information, averaged over the valid examples of `data`.

  "exact": sum_y p(y|x) (d log p(y|x) / d theta)^2: one forward pass, then one backward pass
  per output unit with p(y|x) > 0, accumulated one unit at a time (masked units, whose
  weight is exactly zero, are skipped where the examples are not vectorised).
  "sampled": (d log p(y~|x) / d theta)^2 with y~ drawn from the model (an unbiased estimate
  of the exact value, one backward pass per example; `key` required). For a sequence
  (logits (T, K) per example, next-token prediction) y~ is drawn at every position and the
  estimate is (sum_t d log p(y~_t | x_<t) / d theta)^2 / T, unbiased for the mean over
  positions of the per-position Fisher (the positions' scores have zero mean and are
  independent given x), i.e. the Fisher of the mean next-token loss.
  """
  if estimate not in FISHER_ESTIMATES:
    raise ValueError(f"unknown Fisher estimate {estimate!r}; choose from {FISHER_ESTIMATES}")

  def log_probs(q, x, mask):
    logits = apply_fn(q, x[None])[0]
    return jax.nn.log_softmax(losses.masked_logits(logits[None], mask[None])[0])

  def exact(p, x, mask, key):
    del key
    logp, pullback = jax.vjp(lambda q: log_probs(q, x, mask), p)
    prob = jnp.exp(logp)

    def add_unit(total, y):
      def add(total):
        score, = pullback(jax.nn.one_hot(y, logp.shape[-1], dtype=logp.dtype))
        return jax.tree.map(lambda t, g: t + prob[y] * g ** 2, total, score)
      return jax.lax.cond(prob[y] > 0, add, lambda total: total, total), None

    total, _ = jax.lax.scan(add_unit, pytree_math.zeros_like(p), jnp.arange(logp.shape[-1]))
    return total

  def sampled(p, x, mask, key):
    logp, pullback = jax.vjp(lambda q: log_probs(q, x, mask), p)   # one forward pass
    y = jax.random.categorical(key, logp)
    score, = pullback(jax.nn.one_hot(y, logp.shape[-1], dtype=logp.dtype))
    return jax.tree.map(lambda g: g ** 2 / max(1, y.size), score)

  if estimate == "exact":
    if len(jax.eval_shape(apply_fn, params, data.x[:1]).shape) != 2:
      raise ValueError("the exact Fisher serves one prediction per example; for sequences "
                       "use the sampled estimate")
    return per_example_mean(exact, params, data, _chunk_size(params))
  if key is None:
    raise ValueError("the sampled Fisher needs a key")
  return per_example_mean(sampled, params, data, _chunk_size(params), key)


def output_sensitivity(apply_fn, params, data):
  """MAS importance: mean over valid examples of |d ||f(x)||^2 / d theta| over the active
  units (for a sequence, ||f(x)||^2 is the mean over its positions)."""

  def example(p, x, mask, key):
    del key
    def sq_norm(q):
      out = apply_fn(q, x[None])
      sq = jnp.where(losses.per_position(mask[None], out), out, 0.0) ** 2
      return losses.example_mean(sq.sum(-1))[0]
    return jax.tree.map(jnp.abs, jax.grad(sq_norm)(p))

  return per_example_mean(example, params, data, _chunk_size(params))


def _penalized_loss(apply_fn, penalty):
  def loss(params, state, batch, key):
    del key
    logits = apply_fn(params, batch.x)
    ce = losses.cross_entropy(logits, batch.y, batch.mask, batch.valid)
    return ce + penalty(params, state), {"logits": logits}
  return loss


class EWCState(NamedTuple):
  fisher: Any    # params-shaped: offline, the summed Fisher S; online, the running Fisher
  anchor: Any    # params-shaped: offline, the Fisher-weighted mean anchor; online, the latest
  offset: jax.Array    # scalar: offline, the constant C of `ewc`; online, 0


def _ewc_penalty(strength: float):
  def penalty(params, state):
    return 0.5 * strength * (pytree_math.weighted_sq_distance(state.fisher, params, state.anchor)
                             + state.offset)
  return penalty


def merge_quadratics(state: EWCState, fisher, anchor) -> EWCState:
  """S (theta - a)^2 + C plus F (theta - b)^2 as one term S' (theta - a')^2 + C', exactly:
  S' = S + F, a' = (S a + F b) / S' (b where S' = 0), C' = C + sum S F / S' (a - b)^2."""
  total = jax.tree.map(jnp.add, state.fisher, fisher)
  safe = lambda t: jnp.where(t > 0, t, 1.0)
  mean = jax.tree.map(lambda s, a, f, b, t: jnp.where(t > 0, (s * a + f * b) / safe(t), b),
                      state.fisher, state.anchor, fisher, anchor, total)
  gap = jax.tree.map(lambda s, a, f, b, t: jnp.sum(jnp.where(t > 0, s * f / safe(t), 0.0)
                                                   * (a - b) ** 2),
                     state.fisher, state.anchor, fisher, anchor, total)
  return EWCState(fisher=total, anchor=mean, offset=state.offset + sum(jax.tree.leaves(gap)))


def ewc(apply_fn, *, strength: float, fisher: str = "exact") -> method_lib.ContinualMethod:
  """Offline EWC: one penalty term per finished context, F_k (theta - theta*_k)^2.

  The K terms are one quadratic: sum_k F_k (theta - a_k)^2 = S (theta - a)^2 + C with
  S = sum_k F_k, a = sum_k F_k a_k / S and C a constant; `merge_quadratics` folds each
  finished context in exactly. So a step costs what online EWC's does, however many
  contexts have finished, and the state is two params-shaped trees and a scalar.
  """

  def init_state(params, example):
    del example
    zeros = pytree_math.zeros_like(params)
    return EWCState(fisher=zeros, anchor=zeros, offset=jnp.float32(0.0))

  def end_context(params, state, data, context, key):
    del context
    information = diagonal_fisher(apply_fn, params, data, estimate=fisher, key=key)
    return params, merge_quadratics(state, information, params)

  return method_lib.ContinualMethod(
      name="ewc", family="parameter regularization",
      loss=_penalized_loss(apply_fn, _ewc_penalty(strength)),
      predict=method_lib.classifier_predict(apply_fn),
      init_state=init_state, end_context=end_context, needs_boundaries=BOUNDARY_REASON,
      end_context_at_last=False)


def online_ewc(apply_fn, *, strength: float, gamma: float,
               fisher: str = "exact") -> method_lib.ContinualMethod:
  """Online EWC: a running, gamma-decayed Fisher and the latest anchor."""

  def init_state(params, example):
    del example
    return EWCState(fisher=pytree_math.zeros_like(params), anchor=params,
                    offset=jnp.float32(0.0))

  def end_context(params, state, data, context, key):
    del context
    information = diagonal_fisher(apply_fn, params, data, estimate=fisher, key=key)
    return params, EWCState(
        fisher=jax.tree.map(lambda old, new: gamma * old + new, state.fisher, information),
        anchor=params, offset=state.offset)

  return method_lib.ContinualMethod(
      name="online_ewc", family="parameter regularization",
      loss=_penalized_loss(apply_fn, _ewc_penalty(strength)), predict=method_lib.classifier_predict(apply_fn),
      init_state=init_state, end_context=end_context, needs_boundaries=BOUNDARY_REASON,
      end_context_at_last=False)


class SIState(NamedTuple):
  path_integral: Any   # omega: accumulated -g * delta theta in the current context
  importance: Any      # Omega
  anchor: Any          # parameters at the start of the current context


def synaptic_intelligence(apply_fn, *, strength: float,
                          damping: float) -> method_lib.ContinualMethod:
  """SI with importance Omega, damping xi and strength c."""

  def init_state(params, example):
    del example
    zeros = pytree_math.zeros_like(params)
    return SIState(path_integral=zeros, importance=zeros, anchor=params)

  def penalty(params, state):
    return strength * pytree_math.weighted_sq_distance(state.importance, params, state.anchor)

  def after_update(old_params, new_params, grads, state, batch, aux, info, key):
    del batch, aux, info, key
    omega = jax.tree.map(lambda w, g, new, old: w - g * (new - old),
                         state.path_integral, grads, new_params, old_params)
    return new_params, state._replace(path_integral=omega)

  def end_context(params, state, data, context, key):
    del data, context, key
    importance = jax.tree.map(lambda big, w, p, a: big + w / ((p - a) ** 2 + damping),
                              state.importance, state.path_integral, params, state.anchor)
    return params, SIState(path_integral=pytree_math.zeros_like(params),
                           importance=importance, anchor=params)

  return method_lib.ContinualMethod(
      name="si", family="parameter regularization",
      loss=_penalized_loss(apply_fn, penalty), predict=method_lib.classifier_predict(apply_fn),
      init_state=init_state, after_update=after_update, end_context=end_context,
      needs_boundaries=BOUNDARY_REASON, end_context_at_last=False)


class MASState(NamedTuple):
  importance: Any
  anchor: Any


def memory_aware_synapses(apply_fn, *, strength: float) -> method_lib.ContinualMethod:
  """MAS with accumulated output-sensitivity importances."""

  def init_state(params, example):
    del example
    return MASState(importance=pytree_math.zeros_like(params), anchor=params)

  def penalty(params, state):
    return strength * pytree_math.weighted_sq_distance(state.importance, params, state.anchor)

  def end_context(params, state, data, context, key):
    del context, key
    new = output_sensitivity(apply_fn, params, data)
    return params, MASState(importance=jax.tree.map(jnp.add, state.importance, new),
                            anchor=params)

  return method_lib.ContinualMethod(
      name="mas", family="parameter regularization",
      loss=_penalized_loss(apply_fn, penalty), predict=method_lib.classifier_predict(apply_fn),
      init_state=init_state, end_context=end_context, needs_boundaries=BOUNDARY_REASON,
      end_context_at_last=False)
