"""Self-modifying Titans: chunk-wise path against the per-token reference, causality,
streaming, padding and bad input."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hope.self_modifying import SelfModifyingMemory, check_finite
from hope.self_modifying_reference import reference_inner_statistics, reference_self_modifying
from hope.stream_chunks import chunk_grid
from tests.helpers import fast_and_reference

DIM, HEADS, BATCH, SEQ = 16, 2, 2, 32


def _layer(chunk_size_memory=8, chunk_size_other=3, **kwargs):
  return SelfModifyingMemory(DIM, num_heads=HEADS, chunk_size_memory=chunk_size_memory,
                             chunk_size_other=chunk_size_other, rngs=nnx.Rngs(0), **kwargs)


def _jitted(layer):
  """layer(x, state, mask) as one jitted function of the arrays (one compile per shape)."""
  graphdef, params = nnx.split(layer)
  run = jax.jit(lambda p, x, s, m: nnx.merge(graphdef, p)(x, s, m))
  return lambda x, state, mask=None: run(params, x, state,
                                         jnp.ones(x.shape[:2], bool) if mask is None else mask)


@pytest.fixture(scope="module")
def layer():
  """Chunk sizes 8 (M_memory) and 3 (the others; 32 tokens are not a multiple of 3), shared
  by the tests so that each shape compiles once."""
  return _layer()


@pytest.fixture(scope="module")
def apply(layer):
  return _jitted(layer)


def _x(seq=SEQ, seed=1):
  return jax.random.normal(jax.random.key(seed), (BATCH, seq, DIM))


@pytest.mark.parametrize("max_grad_norm", [None, 0.2])
def test_chunked_path_matches_per_token_reference_values_and_gradients(layer, max_grad_norm):
  """Without the inner-gradient clip and with one that about half the tokens exceed."""
  graphdef, params = nnx.split(layer)
  x = _x()
  weights = jax.random.normal(jax.random.key(2), (BATCH, SEQ, DIM))

  def loss(params, chunked, clip):
    layer = nnx.merge(graphdef, params)
    layer.max_grad_norm = clip
    y = layer(x)[0] if chunked else reference_self_modifying(layer, x)
    return jnp.sum(y * weights), y

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=(1, 2))
  (_, y), grads = value_and_grad(params, True, max_grad_norm)
  (_, y_ref), grads_ref = value_and_grad(params, False, max_grad_norm)
  chex.assert_trees_all_close(y, y_ref, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(grads, grads_ref, rtol=1e-4, atol=1e-6)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.max(jnp.abs(g))) > 0, f"no outer gradient reaches {path}"
  if max_grad_norm is not None:  # the clip is engaged: the unclipped outputs differ
    assert not np.allclose(value_and_grad(params, True, None)[0][1], y, rtol=1e-3)


@pytest.mark.parametrize("inner_rule, inner_decay", [("gd", True), ("dgd", False),
                                                      ("gd", False)])
def test_inner_rule_and_decay_options_match_the_per_token_reference(inner_rule, inner_decay):
  """Gradient descent instead of DGD and/or alpha_t = 1: chunked against per-token, values
  and gradients (with the clip engaged); each option changes the outputs."""
  layer = _layer(inner_rule=inner_rule, inner_decay=inner_decay, max_grad_norm=0.2)
  graphdef, params = nnx.split(layer)
  x = _x()
  weights = jax.random.normal(jax.random.key(2), (BATCH, SEQ, DIM))

  def loss(params, chunked):
    layer = nnx.merge(graphdef, params)
    y = layer(x)[0] if chunked else reference_self_modifying(layer, x)
    return jnp.sum(y * weights), y

  (y, grads), (y_ref, grads_ref) = fast_and_reference(loss, params)
  chex.assert_trees_all_close(y, y_ref, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(grads, grads_ref, rtol=1e-4, atol=1e-6)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    if "alpha_bias" in jax.tree_util.keystr(path) and not inner_decay:
      assert float(jnp.max(jnp.abs(g))) == 0, "alpha_t = 1 leaves b_alpha without effect"
    else:
      assert float(jnp.max(jnp.abs(g))) > 0, f"no outer gradient reaches {path}"
  default = _layer(max_grad_norm=0.2)
  assert not np.allclose(jax.jit(lambda x: default(x)[0])(x), y, rtol=1e-3)


def test_inner_gradient_clip_keeps_grown_memories_finite():
  """Memories whose weights grew (x2 the initial scale) overflow within 128 tokens with
  unclipped inner gradients, the failure seen when streaming a trained HOPE; clipped, the
  weights stay bounded."""
  x = jax.random.normal(jax.random.key(1), (BATCH, 128, DIM))
  for clip, finite in ((None, False), (1.0, True)):
    layer = SelfModifyingMemory(DIM, num_heads=HEADS, chunk_size_memory=8, chunk_size_other=8,
                                max_grad_norm=clip, rngs=nnx.Rngs(0))
    for name in ("other_w1", "other_w2", "memory_w1", "memory_w2"):
      getattr(layer, name)[...] = 2 * getattr(layer, name)[...]
    y, state = jax.jit(lambda x: layer(x))(x)
    assert bool(jnp.isfinite(y).all()) == finite, clip
    if finite:
      check_finite(state)
      assert max(float(jnp.abs(w).max()) for w in jax.tree.leaves(state.other_running)) < 10


def test_inner_statistics_match_the_per_token_reference_and_stream(layer):
  """eta_t, alpha_t and each memory's inner gradient norm before the clip: chunk-wise
  against token by token, and read from a carried state (13 tokens in: mid-chunk on both
  grids) as in one call."""
  x = _x()
  statistics = jax.jit(lambda x: layer.inner_statistics(x))
  stats = statistics(x)
  chex.assert_shape([stats["eta"], stats["alpha"], stats["gradient_norm"], stats["memory_key"],
                     stats["memory_target"]],
                    [(BATCH, SEQ, HEADS)] * 2 + [(BATCH, SEQ, 5, HEADS)]
                    + [(BATCH, SEQ, HEADS, layer.head_dim)] * 2)
  ref = jax.jit(lambda x: reference_inner_statistics(layer, x))(x)
  chex.assert_trees_all_close(stats, ref, rtol=1e-4, atol=1e-6)
  assert float(jnp.std(stats["gradient_norm"])) > 0 and float(jnp.std(stats["eta"])) > 0
  _, state = jax.jit(lambda x: layer(x))(x[:, :13])
  tail = jax.jit(lambda x, s: layer.inner_statistics(x, s))(x[:, 13:], state)
  chex.assert_trees_all_close(tail, jax.tree.map(lambda a: a[:, 13:], stats), rtol=1e-4,
                              atol=1e-6)


def test_chunk_size_one_is_the_per_token_recurrence():
  layer = _layer(1, 1)
  x = _x()
  y, _ = jax.jit(lambda x: layer(x))(x)
  y_ref = jax.jit(lambda x: reference_self_modifying(layer, x))(x)
  chex.assert_trees_all_close(y, y_ref, rtol=1e-4, atol=1e-6)


def test_outputs_are_causal(layer, apply):
  x = _x()
  y, _ = apply(x, layer.init_state(BATCH))
  t = 13                          # inside M_memory's chunk 8..15 and the others' chunk 12..14
  changed = x.at[:, t + 1:].set(jax.random.normal(jax.random.key(3), (BATCH, SEQ - t - 1, DIM)))
  y_changed, _ = apply(changed, layer.init_state(BATCH))
  chex.assert_trees_all_close(y_changed[:, :t + 1], y[:, :t + 1], atol=1e-6)
  assert not np.allclose(y_changed[:, t + 1:], y[:, t + 1:])


def test_streaming_in_padded_pieces_of_any_length_equals_one_call(layer, apply):
  x = _x()
  y_full, s_full = apply(x, layer.init_state(BATCH))
  state = layer.init_state(BATCH)
  for start, stop in ((0, 5), (5, 21), (21, SEQ)):         # 5, 16, 11 tokens, each padded to 16
    piece = jnp.zeros((BATCH, 16, DIM)).at[:, :stop - start].set(x[:, start:stop])
    y, state = apply(piece, state, jnp.arange(16)[None, :] < jnp.full((BATCH, 1), stop - start))
    chex.assert_trees_all_close(y[:, :stop - start], y_full[:, start:stop], atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(state, s_full, atol=1e-5, rtol=1e-5)
  assert not np.allclose(s_full.memory_running["w1"], layer.init_state(BATCH).memory_running["w1"])


def test_a_layer_read_in_whole_pieces_takes_fewer_chunk_steps_and_agrees(layer, apply):
  """piece=4: calls of multiples of 4 tokens (the clocks of chunk sizes 8 and 3 at
  multiples of 4 and 1) give the general layer's outputs and states; a call of 4 tokens
  takes one step of chunk 8, not two; other lengths and masks are refused."""
  pieced = _layer(piece=4)
  x = _x()
  y_full, s_full = apply(x, layer.init_state(BATCH))
  stream = jax.jit(lambda x, state: pieced(x, state))
  state = pieced.init_state(BATCH)
  for start, stop in ((0, 4), (4, 12), (12, 16), (16, SEQ)):
    y, state = stream(x[:, start:stop], state)
    chex.assert_trees_all_close(y, y_full[:, start:stop], atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(state, s_full, atol=1e-5, rtol=1e-5)
  count, position = jnp.int32(4), jnp.int32(4)
  assert chunk_grid(count, position, 8, 4, granule=4).valid.shape[0] == 1
  assert chunk_grid(count, position, 8, 4).valid.shape[0] == 2
  assert chunk_grid(count, position, 3, 4, granule=4).valid.shape[0] == 2
  with pytest.raises(ValueError, match="multiples of 4 tokens without a mask, got 6 tokens"):
    pieced(x[:, :6])
  with pytest.raises(ValueError, match="and a mask"):
    pieced(x, mask=jnp.ones((BATCH, SEQ), bool))


def test_masked_tokens_are_skipped_and_leave_the_state_unchanged(layer, apply):
  x = _x()
  mask = np.ones((BATCH, SEQ), bool)
  mask[0, 16:] = False                                        # right padding
  mask[1, [0, 3, 7, 8, 12, 20, 21, 22, 23, 24, 25, 26, 27, 29, 30, 31]] = False   # holes
  garbage = jnp.where(mask[..., None], x, 1e3)
  y, state = apply(garbage, layer.init_state(BATCH), jnp.asarray(mask))
  assert np.all(np.asarray(y)[~mask] == 0)
  valid = jnp.stack([x[b, mask[b]] for b in range(BATCH)])   # the valid tokens alone: 16 each
  y_valid, s_valid = apply(valid, layer.init_state(BATCH))
  chex.assert_trees_all_close(jnp.stack([y[b, mask[b]] for b in range(BATCH)]), y_valid,
                              atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(state, s_valid, atol=1e-5, rtol=1e-5)


def test_flops_per_token_grow_with_the_chunk():
  small, large = _layer(2, 2), _layer(16, 16)
  assert 0 < small.flops_per_token(SEQ) < large.flops_per_token(SEQ)
  assert large.flops_per_token(8) == _layer(8, 8).flops_per_token(8)
  gd = _layer(16, 16, inner_rule="gd")          # no triangular system: independent of the chunk
  assert gd.flops_per_token(SEQ) == _layer(2, 2, inner_rule="gd").flops_per_token(SEQ)
  assert gd.flops_per_token(SEQ) < small.flops_per_token(SEQ)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_heads=3), "num_heads"),
    (dict(num_heads=2, head_dim=4), "head_dim"),
    (dict(num_heads=2, chunk_size_memory=0), "chunk_size_memory"),
    (dict(num_heads=2, chunk_size_other=-4), "chunk_size_other"),
    (dict(num_heads=2, conv_width=0), "conv_width"),
    (dict(num_heads=2, piece=0), "piece"),
    (dict(num_heads=2, max_grad_norm=0.0), "max_grad_norm"),
    (dict(num_heads=2, max_grad_norm=float("nan")), "max_grad_norm"),
    (dict(num_heads=2, inner_rule="sgd"), "inner_rule must be 'dgd'.* or 'gd'"),
    (dict(num_heads=2, inner_decay="no"), "inner_decay must be True or False"),
    (dict(num_heads=2, inner_decay=1), "inner_decay"),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SelfModifyingMemory(DIM, rngs=nnx.Rngs(0), **kwargs)


def test_non_finite_inner_updates_are_reported_by_memory(layer):
  state = layer.init_state(BATCH)
  check_finite(state)
  running = dict(state.other_running, w2=state.other_running["w2"].at[1, 2].set(jnp.inf))
  with pytest.raises(FloatingPointError, match="M_eta.*running"):
    check_finite(state.replace(other_running=running))
  boundary = dict(state.memory_boundary, w1=state.memory_boundary["w1"].at[0].set(jnp.nan))
  with pytest.raises(FloatingPointError, match="M_memory.*boundary"):
    check_finite(state.replace(memory_boundary=boundary))
