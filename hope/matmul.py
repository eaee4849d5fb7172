"""Small matrix products whose backward pass runs on the CPU's fast dot path.

The gradient of c = a @ b with respect to b is a^T dc: a product that contracts the rows of
its left operand. XLA folds the transpose into the dot, and its CPU backend runs such a dot
on a slow generic path: a batch of 16 x 16 x 16 products takes about 3x as long as a @ b
(jax 0.10.2). `matmul` computes that gradient as `transpose(a) @ dc`, and `transpose` is a
copy that XLA keeps (optimisation barriers), so every product issued, forward and backward
and in derivatives of any order, has the row-major left operand the fast path takes. Values
and gradients are those of a @ b and of swapping the axes. The gain is measured on CPU
only; elsewhere the copies are extra element moves.

Not every Pallas backend lowers optimisation barriers and `jax.custom_vjp` calls (Triton's
lowering, in jax 0.10.2 and 0.12, has a rule for neither), so a kernel body traces under
`plain()`, where the two are a @ b and jnp.swapaxes.
"""
import contextlib

import jax
import jax.numpy as jnp

_plain = False


@contextlib.contextmanager
def plain():
  """Within this context `matmul` and `transpose` trace as plain jnp ops."""
  global _plain
  before, _plain = _plain, True
  try:
    yield
  finally:
    _plain = before


def transpose(a: jax.Array) -> jax.Array:
  """a with its last two axes swapped, as a copy that XLA folds neither into the product that
  made `a` nor into one that reads the result; its gradient is `transpose` of the cotangent."""
  return jnp.swapaxes(a, -1, -2) if _plain else _kept_transpose(a)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ b for a [..., m, k], b [..., k, n] with the same leading axes; its gradients are
  matmul(g, transpose(b)) and matmul(transpose(a), g). Its forward rule and both gradients are
  built from the same two functions, so derivatives of every order keep these forms."""
  return a @ b if _plain else _row_major_matmul(a, b)


@jax.custom_vjp
def _kept_transpose(a):
  barrier = jax.lax.optimization_barrier
  return barrier(jnp.swapaxes(barrier(a), -1, -2))


_kept_transpose.defvjp(lambda a: (_kept_transpose(a), None),
                       lambda _, g: (_kept_transpose(g),))


@jax.custom_vjp
def _row_major_matmul(a, b):
  return a @ b


def _matmul_backward(residuals, g):
  a, b = residuals
  return (_row_major_matmul(g, _kept_transpose(b)),
          _row_major_matmul(_kept_transpose(a), g))


_row_major_matmul.defvjp(lambda a, b: (_row_major_matmul(a, b), (a, b)), _matmul_backward)
