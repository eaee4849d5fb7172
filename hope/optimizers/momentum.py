"""Momentum as an associative memory of gradients (Nested Learning NeurIPS §3, eqs. 17-22).

Plain momentum m_{i+1} = a m_i - eta g_i is one gradient step on the key-less memory
objective <m g_i^T, I> (eqs. 17-18). Two of the paper's extensions are here:

- `preconditioned_momentum`: give the memory the values P_i g_i (eqs. 19-20),
    m_{i+1} = decay m_i - eta P_i g_i,   W_{i+1} = W_i + m_{i+1}.
- `delta_momentum`: an L2 instead of a dot-product objective (eqs. 21-22), which adds a
  gradient-dependent decay so the memory forgets what it stored along the new gradient:
    m_{i+1} = (decay I - beta g_i g_i^T) m_i - eta P_i g_i.

Both use the learning rate inside the recurrence, as written in the paper (optax.sgd scales
the momentum after it instead); the two agree for a constant learning rate. To schedule it,
wrap the rule: `optax.inject_hyperparams(preconditioned_momentum)(learning_rate=schedule)`.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class MomentumState(NamedTuple):
  momentum: optax.Updates
  preconditioner: optax.OptState


def default_preconditioner() -> optax.GradientTransformation:
  """P_i = diag(1 / (sqrt(v_hat_i) + 1e-8)), v the bias-corrected EMA (0.999) of g^2.

  The reference leaves P open ("can carry Hessian information"); the diagonal of Adam's
  second moment is the cheapest curvature estimate a serious default can use.
  """
  return optax.scale_by_adam(b1=0.0, b2=0.999, eps=1e-8)


def _momentum_rule(learning_rate, decay, preconditioner, forget):
  preconditioner = optax.identity() if preconditioner is None else preconditioner

  def init(params):
    return MomentumState(momentum=optax.tree.zeros_like(params),
                         preconditioner=preconditioner.init(params))

  def update(updates, state, params=None):
    values, pre_state = preconditioner.update(updates, state.preconditioner, params)
    momentum = jax.tree.map(lambda m, p: decay * m - learning_rate * p, state.momentum, values)
    if forget is not None:
      momentum = jax.tree.map(lambda new, m, g: new - forget(m, g), momentum, state.momentum,
                              updates)
    return momentum, MomentumState(momentum=momentum, preconditioner=pre_state)

  return optax.GradientTransformation(init, update)


def preconditioned_momentum(learning_rate: float, decay: float = 0.9,
                            preconditioner: optax.GradientTransformation | None = None
                            ) -> optax.GradientTransformation:
  """m_{i+1} = decay m_i - learning_rate P_i g_i; the update is m_{i+1} (eqs. 19-20).

  `preconditioner` is any optax transformation that maps g_i to P_i g_i (default:
  `default_preconditioner()`, a diagonal second-moment P; `optax.identity()` gives plain
  momentum, `hope.optimizers.newton_schulz()` an orthogonalised P g).
  """
  preconditioner = default_preconditioner() if preconditioner is None else preconditioner
  return _momentum_rule(learning_rate, decay, preconditioner, None)


def delta_momentum(learning_rate: float, decay: float = 0.9, beta: float = 1.0, *,
                   normalize: bool = True,
                   preconditioner: optax.GradientTransformation | None = None
                   ) -> optax.GradientTransformation:
  """Delta-rule momentum (eqs. 21-22), per parameter tensor flattened to a vector:

    m_{i+1} = decay m_i - beta k_i <k_i, m_i> - learning_rate P_i g_i,

  with the key k_i = g_i / ||g_i|| (`normalize=True`, the default) or k_i = g_i. The paper
  writes (alpha I - g g^T) m with the raw gradient; with it the recurrence is stable only
  while beta ||g||^2 < 1 + decay, which no gradient scale guarantees, so by default the key is
  normalised as in DeltaNet and beta <= 1 removes exactly the part of the memory along g_i.
  P defaults to the identity (pass `default_preconditioner()` for a diagonal P).
  """

  def forget(m, g):  # beta k <k, m>: the part of the memory along the new key
    k = g / (jnp.sqrt(jnp.sum(g * g)) + 1e-12) if normalize else g
    return beta * k * jnp.vdot(k, m)

  return _momentum_rule(learning_rate, decay, preconditioner, forget)
