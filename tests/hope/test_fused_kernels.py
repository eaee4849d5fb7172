"""The Pallas kernels (interpret mode on CPU) against the XLA path: values and gradients.

The Titans memory's chunked dual form at chunk sizes 16 and 64 and memory depths 1 and 2;
the self-modifying memory's chunk update (gradients, clip, closed-form DGD) at chunk sizes
16 and 64; each memory once more as a module (the kernel under vmap and scan). Tolerances
are the ones the chunked-against-reference tests use.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hope.fused_kernel import fused_kernel
from hope.layers import l2_normalize
from hope.neural_memory import NeuralMemory, chunked_memory
from hope.self_modifying import SelfModifyingMemory, inner_update
from runtime import models

DIM, HEADS, BATCH = 16, 2, 2


def _compare_kernels(module, seq, final_state):
  """Loss, outputs, state and parameter gradients of `module` with kernel 'pallas' and 'xla'."""
  graphdef, params = nnx.split(module)
  params = nnx.to_pure_dict(params)
  x = jax.random.normal(jax.random.key(1), (BATCH, seq, DIM))
  targets = jax.random.normal(jax.random.key(2), x.shape)

  def loss(params, kernel):
    layer = nnx.merge(graphdef, params)
    layer.kernel = kernel
    y, state = layer(x)
    return jnp.sum(y * targets) + sum(jnp.sum(jnp.sin(w)) for w in final_state(state)), (y, state)

  @jax.jit
  def both(params):
    return [jax.value_and_grad(loss, has_aux=True)(params, kernel) for kernel in ("pallas", "xla")]

  ((_, (y_p, state_p)), grads_p), ((_, (y_x, state_x)), grads_x) = both(params)
  chex.assert_trees_all_close(y_p, y_x, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(state_p, state_x, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(grads_p, grads_x, rtol=1e-4, atol=1e-5)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads_p))
  assert float(jnp.abs(y_p).max()) > 0


def _compare_functions(fn, args):
  """Outputs and gradients (of a random projection of every output, with respect to every
  argument) of fn(*args, kernel='pallas') against fn(*args, kernel='xla')."""
  leaves = jax.tree.leaves(jax.eval_shape(lambda *a: fn(*a, kernel="xla"), *args))
  keys = jax.random.split(jax.random.key(3), len(leaves))
  weights = [jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves)]

  def loss(args, kernel):
    out = fn(*args, kernel=kernel)
    return sum(jnp.sum(w * o) for w, o in zip(weights, jax.tree.leaves(out))), out

  @jax.jit
  def both(args):
    return [jax.value_and_grad(loss, has_aux=True)(args, kernel) for kernel in ("pallas", "xla")]

  ((_, out_p), grads_p), ((_, out_x), grads_x) = both(args)
  chex.assert_trees_all_close(out_p, out_x, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(grads_p, grads_x, rtol=1e-4, atol=1e-5)
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads_p))


@pytest.mark.parametrize("chunk_size,depth", [(16, 1), (16, 2), (64, 1), (64, 2)])
def test_titans_chunk_kernel_matches_xla(chunk_size, depth):
  """The dual form over two chunks of one (sequence, head), momentum and decay on, the clip
  engaged on some tokens; gradients with respect to the weights, momentum, q, k, v and gates."""
  head_dim, seq = 8, 2 * chunk_size
  widths = [head_dim] + [2 * head_dim] * (depth - 1) + [head_dim]
  keys = iter(jax.random.split(jax.random.key(0), 16))
  normal = lambda shape, scale=1.0: scale * jax.random.normal(next(keys), shape)
  unit = lambda shape: jax.random.uniform(next(keys), shape, minval=0.05, maxval=0.95)
  weights = tuple(normal((a, b), a ** -0.5) for a, b in zip(widths[:-1], widths[1:]))
  momentum = tuple(normal(w.shape, 0.1) for w in weights)
  q, k, v = (normal((seq, head_dim)) for _ in range(3))
  lr, eta, retain = unit((seq,)), unit((seq,)), unit((seq,))
  run = lambda *a, kernel: chunked_memory(*a, jnp.ones(seq), chunk_size=chunk_size,
                                          use_momentum=True, max_grad_norm=2.0, kernel=kernel)
  _compare_functions(run, (weights, momentum, q, k, v, lr, eta, retain))


def test_titans_memory_module_with_the_kernel_matches_xla():
  """Through NeuralMemory: the kernel batched over sequences and heads by vmap, in the scan."""
  memory = NeuralMemory(DIM, num_heads=HEADS, chunk_size=16, depth=2, max_grad_norm=0.5,
                        rngs=nnx.Rngs(0))
  memory.lr_bias[...] = jnp.array([2.0, 0.0])
  memory.decay_bias[...] = jnp.array([0.0, -1.0])
  _compare_kernels(memory, 32, lambda s: s.weights + s.momentum)


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_self_modifying_chunk_kernel_matches_xla(chunk_size):
  """One memory's chunk update (gradients at the boundary weights, the clip, closed-form DGD)
  for two heads; gradients with respect to every argument."""
  heads, d = 2, 8
  keys = iter(jax.random.split(jax.random.key(0), 16))
  normal = lambda shape, scale=1.0: scale * jax.random.normal(next(keys), shape)
  boundary = {name: normal((heads, d, d), d ** -0.5) for name in ("w1", "w2")}
  running = {name: w + normal(w.shape, 0.05) for name, w in boundary.items()}
  key = l2_normalize(normal((chunk_size, heads, d)))
  target = normal((chunk_size, heads, d))
  eta = jax.random.uniform(next(keys), (chunk_size, heads), maxval=0.5)
  log_alpha = jnp.log(jax.random.uniform(next(keys), (chunk_size, heads), minval=0.9,
                                         maxval=1.0))
  run = lambda *a, kernel: inner_update(*a, max_grad_norm=0.5, rule="dgd", kernel=kernel)
  _compare_functions(run, (boundary, running, key, target, eta, log_alpha))


def test_self_modifying_module_with_the_kernel_matches_xla():
  memory = SelfModifyingMemory(DIM, num_heads=HEADS, chunk_size_memory=16, chunk_size_other=8,
                               max_grad_norm=0.5, rngs=nnx.Rngs(0))
  _compare_kernels(memory, 32, lambda s: jax.tree.leaves((s.memory_running, s.other_running)))


def test_fused_kernel_refuses_integer_operands():
  with pytest.raises(TypeError, match="floating point"):
    fused_kernel(lambda a: a * 2)(jnp.arange(4))


def test_the_config_field_reaches_the_memories():
  shared = dict(vocab_size=256, dim=DIM, num_layers=1, num_heads=HEADS, mlp_dim=32,
                kernel="pallas")
  titans = nnx.eval_shape(lambda: models.build(dict(shared, name="titans", variant="mag")))
  hope = nnx.eval_shape(lambda: models.build(dict(shared, name="hope")))
  assert titans.blocks[0].mixer.memory.kernel == "pallas"
  assert hope.blocks[0].mixer.kernel == "pallas"
  with pytest.raises(ValueError, match="kernel must be 'xla'"):
    NeuralMemory(DIM, num_heads=HEADS, kernel="triton", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="kernel"):
    SelfModifyingMemory(DIM, num_heads=HEADS, kernel="cuda", rngs=nnx.Rngs(0))
