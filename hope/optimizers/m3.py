"""M3, Multi-scale Momentum Muon (Nested Learning arXiv §7.2, Algorithm 1, eq. 75).

CMS applied to the optimizer: a fast momentum updated every step and a slow momentum updated
every C steps from the gradients gathered since its last update, both read out through
Newton-Schulz, mixed with weight alpha and divided by an Adam second moment:

  M1_t = b1 M1_{t-1} + g_t                      O1_t = NS_T(M1_t)
  V_t  = b2 V_{t-1} + (1 - b2) g_t^2            V_hat_t = V_t / (1 - b2^t)
  every C steps:  M2 = b3 M2 + sum_{window} g,  O2 = NS_T(M2)     (else O2 is kept)
  W_t = W_{t-1} - learning_rate (O1_t + alpha O2) / (sqrt(V_hat_t) + eps)

The notes we work from give the accumulators as "M += beta g" without a decay and mark the
exact form unverified; here the momenta decay (b1, b3 < 1, the Muon form) so that they stay
bounded over long runs, and V is Adam's bias-corrected EMA. Before the first slow update
O2 = 0. Matrices only (NS needs 2-D), ValueError otherwise.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hope.optimizers.newton_schulz import COEFFICIENTS, orthogonalize
from hope.optimizers.tree_paths import require_matrices


class M3State(NamedTuple):
  count: jax.Array
  fast: optax.Updates
  slow: optax.Updates
  slow_output: optax.Updates
  window: optax.Updates
  second_moment: optax.Updates


def m3(learning_rate: float, b1: float = 0.95, b2: float = 0.999, b3: float = 0.9,
       alpha: float = 1.0, slow_every: int = 8, eps: float = 1e-8, ns_steps: int = 5,
       coefficients=COEFFICIENTS) -> optax.GradientTransformation:
  """M3 (Algorithm 1; see the module docstring). slow_every is C, the slow momentum's period."""
  if not isinstance(slow_every, int) or slow_every < 1:
    raise ValueError(f"slow_every must be a positive integer, got {slow_every!r}")

  def init(params):
    require_matrices(params, "m3")
    zeros = lambda: optax.tree.zeros_like(params)
    return M3State(count=jnp.zeros((), jnp.int32), fast=zeros(), slow=zeros(),
                   slow_output=zeros(), window=zeros(), second_moment=zeros())

  def update(updates, state, params=None):
    del params
    require_matrices(updates, "m3")
    ns = lambda x: orthogonalize(x, ns_steps, coefficients)
    count = state.count + 1
    fast = jax.tree.map(lambda m, g: b1 * m + g, state.fast, updates)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.second_moment, updates)
    window = jax.tree.map(jnp.add, state.window, updates)
    fire = count % slow_every == 0
    slow = jax.tree.map(lambda m, w: jnp.where(fire, b3 * m + w, m), state.slow, window)
    slow_output = jax.lax.cond(fire, lambda: jax.tree.map(ns, slow), lambda: state.slow_output)
    window = jax.tree.map(lambda w: jnp.where(fire, jnp.zeros_like(w), w), window)
    correction = 1 - b2 ** count.astype(jnp.float32)
    step = jax.tree.map(
        lambda m, o2, v: -learning_rate * (ns(m) + alpha * o2) / (jnp.sqrt(v / correction) + eps),
        fast, slow_output, v)
    return step, M3State(count=count, fast=fast, slow=slow, slow_output=slow_output,
                         window=window, second_moment=v)

  return optax.GradientTransformation(init, update)
