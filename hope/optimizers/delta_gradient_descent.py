"""Delta Gradient Descent (DGD; Nested Learning NeurIPS eqs. 25-29, arXiv eqs. 56-57, 88).

Replacing the dot-product objective behind gradient descent by L2 regression gives a
data-dependent decay of the previous weights along the current input x_t:

  W_{t+1} = (retain I - rate x_t x_t^T) W_t - learning_rate G_t                 (eq. 29)

written for the zoo's layout z @ W (W [d_in, d_out], input axis first; the paper writes
W x and multiplies from the right). An optax rule sees only G_t = x_t^T delta_t, not x_t, but
for one sample G G^T = ||delta||^2 x x^T, so the unit-key projector is recovered exactly as

  x_hat x_hat^T = G_t G_t^T / ||G_t||_F^2,

and for a batch this is the gradient-weighted average of the samples' projectors (a matrix
with eigenvalues in [0, 1] summing to 1, so the decay stays bounded). `rate` defaults to
learning_rate, as in HOPE's inner rule with unit-norm keys (eq. 88); retain = 1 - alpha is
the weight decay. Matrices only: a vector has no input axis to project (ValueError).
"""
import jax
import jax.numpy as jnp
import optax

from hope.optimizers.tree_paths import require_matrices


def delta_gradient_descent(learning_rate: float, retain: float = 1.0,
                           rate: float | None = None) -> optax.GradientTransformation:
  """DGD for matrix parameters; the update needs `params` (W_t). See the module docstring."""

  def init(params):
    require_matrices(params, "delta_gradient_descent")
    return optax.EmptyState()

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("delta_gradient_descent needs params in update(): the decay acts on W_t")
    require_matrices(updates, "delta_gradient_descent")
    r = learning_rate if rate is None else rate

    def step(g, w):
      g32, w32 = g.astype(jnp.float32), w.astype(jnp.float32)
      projected = g32 @ (g32.T @ w32) / (jnp.sum(g32 * g32) + 1e-12)  # x_hat x_hat^T W
      new = retain * w32 - r * projected - learning_rate * g32
      return (new - w32).astype(g.dtype)

    return jax.tree.map(step, updates, params), state

  return optax.GradientTransformation(init, update)
