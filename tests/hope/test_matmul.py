"""hope.matmul: the same values and derivatives as a @ b and swapaxes, and plain ops in a
Pallas kernel's body."""
import re

import chex
import jax
import jax.numpy as jnp

from hope import matmul as mm
from hope.fused_kernel import fused_kernel


def _operands():
  a = jax.random.normal(jax.random.key(0), (3, 5, 4))
  b = jax.random.normal(jax.random.key(1), (3, 4, 6))
  return a, b


def _loss(product, transpose):
  weights = jax.random.normal(jax.random.key(2), (3, 6, 5))
  return lambda a, b: jnp.sum(jnp.sin(transpose(product(a, b))) * weights)


_fast = _loss(mm.matmul, mm.transpose)
_plain = _loss(jnp.matmul, lambda x: jnp.swapaxes(x, -1, -2))
_first = lambda f: jax.grad(f, argnums=(0, 1))
# reverse over reverse, as a memory taught through an inner gradient differentiates it
_second = lambda f: jax.grad(lambda a, b: jnp.sum(_first(f)(a, b)[1] ** 2), argnums=(0, 1))


def test_values_first_and_second_derivatives_match_plain_ops():
  a, b = _operands()
  chex.assert_trees_all_close(jax.jit(_fast)(a, b), _plain(a, b), rtol=1e-5)
  chex.assert_trees_all_close(jax.jit(_first(_fast))(a, b), _first(_plain)(a, b), rtol=1e-5,
                              atol=1e-6)
  chex.assert_trees_all_close(jax.jit(_second(_fast))(a, b), _second(_plain)(a, b),
                              rtol=1e-4, atol=1e-5)


def _contracted_axes(f, a, b):
  """The (left, right) contracted axes of every dot in f's compiled program."""
  hlo = jax.jit(f).lower(a, b).compile().as_text()
  return re.findall(r"lhs_contracting_dims=\{(\d+)\}.*?rhs_contracting_dims=\{(\d+)\}", hlo)


def test_every_compiled_dot_contracts_the_left_operands_last_axis():
  """To the second derivative, each dot contracts a's last axis with b's rows (the fast
  path), where the plain ops' derivatives contract a's rows."""
  a, b = _operands()
  for f in (_fast, _first(_fast), _second(_fast)):
    axes = _contracted_axes(f, a, b)
    assert axes and set(axes) == {("2", "1")}, axes
  assert ("1", "2") in _contracted_axes(_second(_plain), a, b)


def test_a_fused_kernel_body_traces_plain_ops():
  """Not every Pallas backend lowers optimisation barriers and `jax.custom_vjp` calls: the
  kernels' forward and backward bodies hold plain products, while the same function outside
  a kernel keeps both."""
  a, b = _operands()
  body = lambda a, b: mm.transpose(mm.matmul(a, b))
  grad = lambda f: jax.grad(lambda a, b: jnp.sum(f(a, b) ** 2), argnums=(0, 1))
  outside = str(jax.make_jaxpr(grad(body))(a, b))
  assert "optimization_barrier" in outside and "_row_major_matmul" in outside
  inside = str(jax.make_jaxpr(grad(fused_kernel(body)))(a, b))
  assert inside.count("pallas_call") == 2                  # forward and backward kernels
  assert "optimization_barrier" not in inside and "_row_major_matmul" not in inside
  assert not mm._plain
