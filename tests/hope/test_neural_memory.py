"""Titans neural memory: the chunked dual form against the per-token reference, streaming,
padding, retrieval and bad input.

Shapes are tiny, so compilation dominates the run time (the suite compiles at XLA backend
optimisation level 0, see tests/conftest.py), and the equivalence cases are a pairwise
cover rather than a full product.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hope.neural_memory import (MemoryState, NeuralMemory, check_state_finite, memory_loss,
                                segment_products)

DIM, HEADS, BATCH, SEQ = 16, 2, 2, 32


def _memory(**kwargs) -> NeuralMemory:
  return NeuralMemory(DIM, num_heads=HEADS, rngs=nnx.Rngs(0), **kwargs)


def _inputs(seq=SEQ, seed=1):
  return jax.random.normal(jax.random.key(seed), (BATCH, seq, DIM))




def _runner(memory: NeuralMemory, implementation: str | None = None):
  """A jitted pure function (params, x, state, mask) -> (y, state) of the memory's structure."""
  graphdef, params = nnx.split(memory)

  @jax.jit
  def run(params, x, state, mask):
    module = nnx.merge(graphdef, params)
    if implementation is not None:
      module.implementation = implementation
    return module(x, state, mask)

  return run, nnx.to_pure_dict(params)


# Pairwise cover of chunk size x depth x momentum x decay (every pair of values appears),
# with the per-token gradient clip on (at a norm some tokens exceed and some do not) or off.
CASES = [  # chunk_size, depth, momentum, decay, max_grad_norm
    (1, 1, True, True, None),
    (1, 2, False, False, 0.5),
    (4, 2, True, True, 0.5),
    (4, 1, False, False, None),
    (16, 2, True, False, 0.5),
    (16, 1, False, True, 0.5),
]


@pytest.mark.parametrize("chunk_size,depth,momentum,decay,max_grad_norm", CASES)
def test_chunked_matches_reference_outputs_and_gradients(chunk_size, depth, momentum, decay,
                                                         max_grad_norm):
  memory = _memory(chunk_size=chunk_size, depth=depth, momentum=momentum, decay=decay,
                   max_grad_norm=max_grad_norm)
  # Spread the gates so that momentum and forgetting matter; for head 0 saturate them
  # (eta -> 0, 1 - alpha -> 0) where differences of log-cumsums would fail.
  if momentum:
    memory.momentum_bias[...] = jnp.array([-30.0, 0.0])
  if decay:
    memory.decay_bias[...] = jnp.array([30.0, -1.0])
  memory.lr_bias[...] = jnp.array([2.0, 0.0])
  graphdef, params = nnx.split(memory)
  params = nnx.to_pure_dict(params)
  x = _inputs()
  targets = jax.random.normal(jax.random.key(2), x.shape)
  mask = jnp.ones((BATCH, SEQ), bool).at[1, -5:].set(False)  # a right-padded row

  def loss(params, implementation, clip=max_grad_norm):
    module = nnx.merge(graphdef, params)
    module.implementation, module.max_grad_norm = implementation, clip
    y, state = module(x, mask=mask)
    final = sum(jnp.sum(jnp.sin(w)) for w in state.weights + state.momentum)
    return jnp.sum(y * targets) + final, (y, state)

  @jax.jit
  def both(params):
    return [jax.value_and_grad(loss, has_aux=True)(params, implementation)
            for implementation in ("chunked", "reference")]

  ((_, (y_c, state_c)), grads_c), ((_, (y_r, state_r)), grads_r) = both(params)
  if max_grad_norm is not None:  # the clip is engaged: without it the outputs differ
    _, (y_unclipped, _) = jax.jit(lambda p: loss(p, "reference", None))(params)
    assert not np.allclose(y_unclipped, y_r, rtol=1e-3)
  chex.assert_trees_all_close(y_c, y_r, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(state_c, state_r, rtol=1e-4, atol=1e-6)
  assert len(jax.tree.leaves(grads_c)) == len(jax.tree.leaves(params))
  chex.assert_trees_all_close(grads_c, grads_r, rtol=1e-4, atol=1e-5)
  for name, g in jax.tree_util.tree_leaves_with_path(grads_c):
    assert np.all(np.isfinite(g)), name
  assert float(jnp.abs(y_c[1, -5:]).max()) == 0.0  # masked tokens read out zero


def test_segment_products_are_exact_at_zero():
  g = jnp.array([0.5, 0.0, 2.0, 3.0])
  expected = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 2, 1, 0], [0, 6, 3, 1]], np.float32)
  np.testing.assert_allclose(segment_products(g), expected)


def test_streaming_over_pieces_equals_one_call_and_starts_from_learned_m0():
  memory = _memory(chunk_size=4, depth=2)
  run, params = _runner(memory)
  x = _inputs(seq=29)
  ones = lambda n: jnp.ones((BATCH, n), bool)
  y_full, state_full = run(params, x, memory.init_state(BATCH), ones(29))

  state, pieces = memory.init_state(BATCH), []
  for start, stop in [(0, 12), (12, 24), (24, 29)]:  # multiples of 4, then a remainder
    y, state = run(params, x[:, start:stop], state, ones(stop - start))
    pieces.append(y)
  chex.assert_trees_all_close(jnp.concatenate(pieces, axis=1), y_full, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(state, state_full, rtol=1e-5, atol=1e-6)

  initial = memory.init_state(BATCH)
  for w, learned in zip(initial.weights, memory.initial_weights):
    chex.assert_trees_all_close(w, jnp.broadcast_to(learned[...], w.shape))
  y_default, _ = run(params, x, None, ones(29))  # state None = init_state
  chex.assert_trees_all_close(y_default, y_full, rtol=1e-5, atol=1e-6)
  shifted = jax.tree.map(lambda a: a, params)  # a copy of the nested dicts
  shifted["initial_weights"][0] = params["initial_weights"][0] + 0.5
  y_shifted, _ = run(shifted, x, None, ones(29))
  assert not np.allclose(y_shifted[:, 0], y_full[:, 0])  # the first token already reads M_0


def test_padding_leaves_outputs_and_state_as_unpadded():
  memory = _memory(chunk_size=4, depth=2)
  chunked, params = _runner(memory)
  reference, _ = _runner(memory, "reference")
  x = _inputs(seq=32)
  ones = jnp.ones((BATCH, 32), bool)
  # 30 tokens: the chunked path pads to 32 internally; the reference scans exactly 30.
  y_pad, state_pad = chunked(params, x[:, :30], None, ones[:, :30])
  y_ref, state_ref = reference(params, x[:, :30], None, ones[:, :30])
  chex.assert_trees_all_close(y_pad, y_ref, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(state_pad, state_ref, rtol=1e-4, atol=1e-6)
  # The same 30 tokens inside a longer sequence: the prefix reads out the same (causality) ...
  y_long, _ = chunked(params, x, None, ones)
  chex.assert_trees_all_close(y_long[:, :30], y_pad, rtol=1e-5, atol=1e-6)
  # ... and marking the last two as padding with `mask` gives the 30-token state exactly.
  y_masked, state_masked = chunked(params, x, None, ones.at[:, 30:].set(False))
  chex.assert_trees_all_close(y_masked[:, :30], y_pad, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(state_masked, state_pad, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(y_masked[:, 30:]).max()) == 0.0


def test_retrieve_reads_without_writing():
  memory = _memory(chunk_size=4, depth=1, momentum=False, decay=False)
  run, params = _runner(memory)
  graphdef = nnx.graphdef(memory)
  retrieve = jax.jit(lambda params, x, state: nnx.merge(graphdef, params).retrieve(x, state))
  ones = jnp.ones((BATCH, 8), bool)
  # A state with written weights and full conv caches.
  _, state = run(params, _inputs(seq=8), memory.init_state(BATCH), ones)
  later = _inputs(seq=8, seed=3)
  retrieved = retrieve(params, later, state)
  params["lr_bias"] = jnp.full((HEADS,), -1e9)  # theta = 0: a call that writes nothing
  y, frozen = run(params, later, state, ones)
  chex.assert_trees_all_close(retrieved, y, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(frozen.weights, state.weights)


def test_associative_loss_and_inner_gradient_norm_per_token_and_lower_loss_where_written():
  memory = _memory(chunk_size=4, max_lr=0.5)
  run, params = _runner(memory)
  ones = jnp.ones((BATCH, 8), bool)
  x, later = _inputs(seq=8), _inputs(seq=8, seed=3)
  _, state = run(params, x, memory.init_state(BATCH), ones)
  loss = memory.associative_loss(later, state)
  assert loss.shape == (BATCH, 8, HEADS)
  _, k, v, _ = memory._keys_values_queries(later, state.conv, ones)
  for b, h in ((0, 0), (1, 1)):
    weights = tuple(w[b, h] for w in state.weights)
    np.testing.assert_allclose(loss[b, :, h].sum(), memory_loss(weights, k[b, :, h], v[b, :, h]),
                               rtol=1e-5)
  norms = memory.inner_gradient_norm(later, state)
  assert norms.shape == (BATCH, 8, HEADS)
  weights = tuple(w[1, 0] for w in state.weights)
  grad = jax.grad(memory_loss)(weights, k[1, 5, 0], v[1, 5, 0])
  np.testing.assert_allclose(norms[1, 5, 0], optax.tree.norm(grad), rtol=1e-5)
  # Written on x, the weights map x's own pairs better than the initial ones do.
  fresh = memory.init_state(BATCH)
  written = memory.associative_loss(x, state.replace(conv=fresh.conv)).mean()
  assert written < memory.associative_loss(x, fresh).mean()


def test_parameters_use_logical_axis_names():
  allowed = {"embed", "heads", "head_dim", "mlp", None}
  for path, variable in nnx.iter_graph(_memory()):
    if isinstance(variable, nnx.Param):
      axes = variable.get_metadata()["out_sharding"]
      assert set(axes) <= allowed and len(axes) == variable.ndim, (path, axes)


def test_flops_per_token_counts_chunk_work():
  memory = _memory(chunk_size=16)
  assert memory.flops_per_token(4) < memory.flops_per_token(16) == memory.flops_per_token(4096)
  assert _memory(chunk_size=16, momentum=False).flops_per_token(64) < memory.flops_per_token(64)


def test_bad_arguments_name_the_argument():
  for kwargs, name in [(dict(depth=0), "depth"), (dict(chunk_size=0), "chunk_size"),
                       (dict(conv_width=0), "conv_width"), (dict(expansion=0), "expansion"),
                       (dict(max_lr=float("nan")), "max_lr"),
                       (dict(max_grad_norm=0.0), "max_grad_norm"),
                       (dict(implementation="fast"), "implementation")]:
    with pytest.raises(ValueError, match=name):
      _memory(**kwargs)
  with pytest.raises(ValueError, match="num_heads"):
    NeuralMemory(10, num_heads=3, rngs=nnx.Rngs(0))
  memory = _memory(chunk_size=4, depth=1)
  with pytest.raises(ValueError, match="x must have shape"):
    memory(jnp.zeros((BATCH, 4, DIM + 1)))
  with pytest.raises(ValueError, match="mask"):
    memory(jnp.zeros((BATCH, 4, DIM)), mask=jnp.ones((BATCH, 5)))
  with pytest.raises(ValueError, match="init_state"):
    memory(jnp.zeros((BATCH, 4, DIM)), memory.init_state(BATCH + 1))


def test_non_finite_state_is_reported_by_name():
  memory = _memory(chunk_size=4, depth=1)
  run, params = _runner(memory)
  ones = jnp.ones((BATCH, 8), bool)
  x = _inputs(seq=8).at[1, 5, 3].set(jnp.nan)
  _, state = run(params, x, None, ones)
  with pytest.raises(FloatingPointError, match=r"weights\[0\] \(memory layer 1 of 1\).*rows \[1\]"):
    check_state_finite(state)
  _, good = run(params, _inputs(seq=8), None, ones)
  assert isinstance(check_state_finite(good), MemoryState)
