"""hope.matmul: the same values and derivatives as a @ b and swapaxes, and plain ops in a
Pallas kernel's body."""
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


def test_values_first_and_second_derivatives_match_plain_ops():
  a, b = _operands()
  fast = _loss(mm.matmul, mm.transpose)
  plain = _loss(jnp.matmul, lambda x: jnp.swapaxes(x, -1, -2))
  chex.assert_trees_all_close(jax.jit(fast)(a, b), plain(a, b), rtol=1e-5)
  first = lambda f: jax.grad(f, argnums=(0, 1))
  chex.assert_trees_all_close(jax.jit(first(fast))(a, b), first(plain)(a, b), rtol=1e-5,
                              atol=1e-6)
  # reverse over reverse, as a memory taught through an inner gradient differentiates it
  second = lambda f: jax.grad(lambda a, b: jnp.sum(first(f)(a, b)[1] ** 2), argnums=(0, 1))
  chex.assert_trees_all_close(jax.jit(second(fast))(a, b), second(plain)(a, b), rtol=1e-4,
                              atol=1e-5)


def test_a_fused_kernel_body_traces_plain_ops():
  """Pallas lowers neither optimisation barriers nor custom derivative rules: the kernels'
  forward and backward bodies hold plain products, while the same function outside a kernel
  keeps both."""
  a, b = _operands()
  body = lambda a, b: mm.transpose(mm.matmul(a, b))
  grad = lambda f: jax.grad(lambda a, b: jnp.sum(f(a, b) ** 2), argnums=(0, 1))
  outside = str(jax.make_jaxpr(grad(body))(a, b))
  assert "optimization_barrier" in outside and "_row_major_matmul" in outside
  inside = str(jax.make_jaxpr(grad(fused_kernel(body)))(a, b))
  assert inside.count("pallas_call") == 2                  # forward and backward kernels
  assert "optimization_barrier" not in inside and "_row_major_matmul" not in inside
  assert not mm._plain
