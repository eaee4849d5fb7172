"""Non-linear outputs: Newton-Schulz orthogonalisation, and Muon.

Nested Learning's fifth extension of momentum (NeurIPS eq. 24; arXiv §4.4): the update is a
non-linear function of the momentum's read-out, W_{i+1} = W_i + sigma(m_{i+1}(u_i)). With a
linear momentum and sigma = Newton-Schulz (an approximate polar factor U V^T of the
momentum U S V^T) this is Muon (Jordan et al. 2024).

The iteration is the usual quintic one, X <- a X + (b A + c A^2) X with A = X X^T and
(a, b, c) = (3.4445, -4.7750, 2.0315), five steps, after scaling X to unit Frobenius norm.
It runs in float32 on the shorter side (X is transposed when it has more rows than
columns). It moves the singular values towards 1 but not onto it: after five steps they lie
roughly in [0.68, 1.2], except those far below the largest (under about 0.2% of the Frobenius
norm), which stay smaller. These coefficients trade exactness for speed, as in the Muon
reference code. optax ships the same iteration only inside `optax.contrib.muon` (its Newton-
Schulz function is private; the public transformations add Nesterov momentum and bias
correction), so it is written here and the tests check it against optax's.
"""
import jax
import jax.numpy as jnp
import optax

from hope.optimizers.tree_paths import require_matrices

COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(x: jax.Array, steps: int = 5, coefficients=COEFFICIENTS,
                  eps: float = 1e-7) -> jax.Array:
  """NS_T(x) for a matrix x [m, n]: T quintic Newton-Schulz steps (see the module docstring)."""
  if x.ndim != 2:
    raise ValueError(f"orthogonalize needs a 2-D matrix, got shape {x.shape}")
  a, b, c = coefficients
  y = x.astype(jnp.float32)
  tall = y.shape[0] > y.shape[1]
  if tall:
    y = y.T
  y = y / (jnp.linalg.norm(y) + eps)
  for _ in range(steps):
    gram = y @ y.T
    y = a * y + (b * gram + c * gram @ gram) @ y
  return (y.T if tall else y).astype(x.dtype)


def newton_schulz(steps: int = 5, coefficients=COEFFICIENTS,
                  eps: float = 1e-7) -> optax.GradientTransformation:
  """Stateless: replaces every (matrix) update by NS_T(update) (NeurIPS eq. 24, sigma = NS).

  Every leaf must be a 2-D matrix (ValueError otherwise, at init and at update).
  """
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps!r}")

  def init(params):
    require_matrices(params, "newton_schulz")
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    require_matrices(updates, "newton_schulz")
    return jax.tree.map(lambda u: orthogonalize(u, steps, coefficients, eps), updates), state

  return optax.GradientTransformation(init, update)


def muon(learning_rate, momentum: float = 0.95, *, nesterov: bool = False, steps: int = 5,
         coefficients=COEFFICIENTS, eps: float = 1e-7) -> optax.GradientTransformation:
  """Momentum with a Newton-Schulz output, the Nested Learning form of Muon (eqs. 17-18, 24):

    m_{i+1} = momentum m_i + g_i,     W_{i+1} = W_i - learning_rate NS_T(m_{i+1}).

  Matrices only; give vectors and embeddings their own rule (e.g. AdamW) with optax.partition.
  """
  return optax.chain(optax.trace(decay=momentum, nesterov=nesterov),
                     newton_schulz(steps, coefficients, eps),
                     optax.scale_by_learning_rate(learning_rate))
