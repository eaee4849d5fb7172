"""Small reductions over parameter pytrees (inner products, weighted squared distances)."""
import jax
import jax.numpy as jnp


def tree_dot(a, b):
  """sum_i a_i b_i over all leaves."""
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def weighted_sq_distance(weights, params, anchor):
  """sum_i w_i (theta_i - theta*_i)^2 over all leaves."""
  return sum(jnp.sum(w * (p - q) ** 2) for w, p, q in
             zip(jax.tree.leaves(weights), jax.tree.leaves(params), jax.tree.leaves(anchor)))


def zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)
