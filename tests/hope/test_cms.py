"""Continuum Memory System against a per-token loop: boundaries, updates, streaming, padding."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hope.cms import CMSState, ContinuumMemory, check_finite
from hope.cms_reference import reference_cms
from hope.stream_chunks import chunk_grid

DIM, HIDDEN, BATCH, SEQ = 16, 32, 2, 32


def _cms(chunk_sizes=(3, 8, None), inner_lr=(0.05, 0.02, 0.0), **kwargs):
  return ContinuumMemory(DIM, hidden=HIDDEN, chunk_sizes=chunk_sizes, inner_lr=inner_lr,
                         rngs=nnx.Rngs(0), **kwargs)


def _jitted(module):
  """module(x, state, mask) as one jitted function of the arrays (one compile per shape)."""
  graphdef, params = nnx.split(module)
  apply = jax.jit(lambda p, x, s, m: nnx.merge(graphdef, p)(x, s, m))
  return lambda x, state, mask=None: apply(params, x, state,
                                           jnp.ones(x.shape[:2], bool) if mask is None else mask)


@pytest.fixture(scope="module")
def cms():
  """Three levels (chunk sizes 3, 8, frozen) shared by the tests, so shapes compile once."""
  return _cms()


@pytest.fixture(scope="module")
def apply(cms):
  return _jitted(cms)


def _x(seq=SEQ, batch=BATCH, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, seq, DIM))


def test_levels_change_exactly_at_their_boundaries_by_lr_times_summed_gradient(cms, apply):
  x = _x()
  expected_y, history = reference_cms(cms, x)       # jax.grad of the inner loss, token by token
  step = apply
  state = cms.init_state(BATCH)
  ys, changed = [], {0: [], 1: []}
  for t in range(SEQ):                               # one-token pieces: the state after each token
    before = state
    y, state = step(x[:, t:t + 1], state)
    ys.append(y)
    for l in (0, 1):
      for name, w in zip(("w_in", "w_out"), history[t][l]):
        chex.assert_trees_all_close(getattr(state.levels[l], name), w, atol=1e-6, rtol=1e-5)
      if not np.array_equal(state.levels[l].w_in, before.levels[l].w_in):
        changed[l].append(t + 1)
  assert changed == {0: list(range(3, SEQ + 1, 3)), 1: list(range(8, SEQ + 1, 8))}
  assert state.levels[2] is None
  chex.assert_trees_all_close(jnp.concatenate(ys, axis=1), expected_y, atol=1e-5, rtol=1e-5)
  y, _ = apply(x, cms.init_state(BATCH))            # one call = the token-by-token stream
  chex.assert_trees_all_close(y, expected_y, atol=1e-5, rtol=1e-5)


def test_inner_gradient_clip_matches_the_reference_and_bounds_a_diverging_level():
  """With a clip that about half the tokens exceed, the chunked scan equals the per-token
  reference (outputs and weights) and differs from the unclipped run; with a step size at
  which plain gradient descent on the inner objective overflows, the clip keeps it finite."""
  x = _x()
  clipped = _cms()
  clipped.max_grad_norm = 0.8                                  # 0.8 * dim = 12.8
  y, state = jax.jit(lambda x: clipped(x))(x)
  y_ref, history = reference_cms(clipped, x)
  chex.assert_trees_all_close(y, y_ref, atol=1e-5, rtol=1e-5)
  for l in (0, 1):
    chex.assert_trees_all_close((state.levels[l].w_in, state.levels[l].w_out), history[-1][l],
                                atol=1e-6, rtol=1e-5)
  assert not np.allclose(reference_cms(_cms(), x)[0], y_ref, rtol=1e-4)
  for clip, finite in ((None, False), (8.0, True)):
    level = ContinuumMemory(DIM, hidden=HIDDEN, chunk_sizes=(1,), inner_lr=0.5,
                            max_grad_norm=clip, rngs=nnx.Rngs(0))
    y, _ = jax.jit(lambda x: level(x))(_x(seq=64))
    assert bool(jnp.isfinite(y).all()) == finite, clip


def test_frozen_level_never_changes_and_outer_gradients_reach_initial_weights(cms):
  x = _x()
  graphdef, params = nnx.split(cms)

  def loss(params):
    y, _ = nnx.merge(graphdef, params)(x, None, None)
    return jnp.sum(y[:, -8:] ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.max(jnp.abs(g))) > 0, f"no outer gradient reaches {path}"
  # A frozen level alone is a plain residual MLP: token t's output ignores the other tokens.
  frozen = _cms(chunk_sizes=(0,), inner_lr=0.0)
  assert frozen.chunk_sizes == (None,)
  y, state = _jitted(frozen)(x, frozen.init_state(BATCH))
  assert state.levels == (None,)
  y_shuffled, _ = _jitted(frozen)(x[:, ::-1], frozen.init_state(BATCH))
  chex.assert_trees_all_close(y_shuffled[:, ::-1], y, atol=1e-6)


def test_streaming_in_pieces_of_any_length_equals_one_call(cms, apply):
  x = _x()
  y_full, s_full = apply(x, cms.init_state(BATCH))
  state, pieces = cms.init_state(BATCH), []
  for start, stop in ((0, 5), (5, 10), (10, SEQ)):          # 5, 5, 22 tokens
    y, state = apply(x[:, start:stop], state)
    pieces.append(y)
  chex.assert_trees_all_close(jnp.concatenate(pieces, axis=1), y_full, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(state, s_full, atol=1e-5, rtol=1e-5)


def test_a_fresh_state_scans_only_the_chunks_the_tokens_need_and_agrees(cms, apply):
  """state=None (the clocks known to be at 0, as in training) takes ceil(seq / C) chunk
  steps instead of one more; outputs and final state equal the general grid's."""
  x = _x()
  y, state = jax.jit(lambda x: cms(x))(x)
  y_general, state_general = apply(x, cms.init_state(BATCH))
  chex.assert_trees_all_close(y, y_general, atol=1e-6, rtol=1e-6)
  chex.assert_trees_all_close(state, state_general, atol=1e-6, rtol=1e-6)
  count, zero = jnp.int32(SEQ), jnp.int32(0)
  assert chunk_grid(count, zero, 3, SEQ, at_boundary=True).valid.shape[0] == 11   # 32 / 3
  assert chunk_grid(count, zero, 3, SEQ).valid.shape[0] == 12
  assert chunk_grid(count, zero, 8, SEQ, at_boundary=True).valid.shape[0] == 4


def test_outputs_are_causal(cms, apply):
  x = _x()
  y, _ = apply(x, cms.init_state(BATCH))
  t = 19                           # inside level 0's chunk 18..20 and level 1's chunk 16..23
  changed = x.at[:, t + 1:].multiply(-3.0)
  y_changed, _ = apply(changed, cms.init_state(BATCH))
  chex.assert_trees_all_close(y_changed[:, :t + 1], y[:, :t + 1], atol=1e-6)
  assert not np.allclose(y_changed[:, t + 1:], y[:, t + 1:])


def test_masked_tokens_are_skipped_and_leave_the_state_unchanged(cms, apply):
  x = _x()
  mask = np.ones((BATCH, SEQ), bool)
  mask[0, 22:] = False                                        # right padding
  mask[1, [0, 7, 8, 20, 21, 22, 23, 24, 30, 31]] = False     # holes anywhere
  garbage = jnp.where(mask[..., None], x, 1e3)
  y, state = apply(garbage, cms.init_state(BATCH), jnp.asarray(mask))
  assert np.all(np.asarray(y)[~mask] == 0)
  valid = jnp.stack([x[b, mask[b]] for b in range(BATCH)])   # the valid tokens alone: 22 each
  y_valid, s_valid = apply(valid, cms.init_state(BATCH))
  chex.assert_trees_all_close(jnp.stack([y[b, mask[b]] for b in range(BATCH)]), y_valid,
                              atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(state, s_valid, atol=1e-5, rtol=1e-5)


def test_teach_signal_applies_the_weights_in_force_and_teach_sums_pieces_to_the_boundary():
  """With the teach signal a call applies the state's weights and changes nothing; `teach`
  clips each piece's gradient per sequence (to max_grad_norm * dim * P), sums the pieces and
  applies lr times the sum when the level's chunk ends."""
  teach = _cms(chunk_sizes=(4, 8, None), inner_lr=(0.5, 0.25, 0.0), signal="teach")
  frozen = _cms(chunk_sizes=(None, None, None), inner_lr=0.0)     # the same parameters
  assert teach.teach_piece == 4 and all(level.target is None for level in teach.levels)
  x = _x()
  state = teach.init_state(BATCH)
  y, same = teach(x, state)
  assert same is state
  chex.assert_trees_all_close(y, frozen(x)[0], atol=1e-6)

  keys = jax.random.split(jax.random.key(5), 4)
  grads = CMSState(tuple(None if s is None else s.replace(
      w_in=jax.random.normal(keys[2 * l], s.w_in.shape),
      w_out=jax.random.normal(keys[2 * l + 1], s.w_out.shape)) for l, s in enumerate(state.levels)))
  norm = lambda g: np.sqrt(np.sum(np.square(g.w_in), (1, 2)) + np.sum(np.square(g.w_out), (1, 2)))
  teach.max_grad_norm = float(np.mean(norm(grads.levels[0]))) / (DIM * 4)   # clips one sequence
  factor = [np.minimum(1, teach.max_grad_norm * DIM * 4 / norm(g))[:, None, None]
            for g in grads.levels[:2]]
  assert np.sum(factor[0] < 1) == 1
  after_one = teach.teach(state, grads, 4)
  after_two = teach.teach(after_one, grads, 4)
  first, second = after_one.levels, after_two.levels
  start, g = state.levels, grads.levels
  chex.assert_trees_all_close(first[0].w_in, start[0].w_in - 0.5 * factor[0] * g[0].w_in,
                              atol=1e-6)
  np.testing.assert_array_equal(first[0].grad_in, 0)
  np.testing.assert_array_equal(first[1].w_out, start[1].w_out)               # C = 8: pending
  chex.assert_trees_all_close(first[1].grad_out, factor[1] * g[1].w_out, atol=1e-6)
  np.testing.assert_array_equal(first[1].position, [4, 4])
  chex.assert_trees_all_close(second[1].w_out, start[1].w_out - 0.25 * 2 * factor[1] * g[1].w_out,
                              atol=1e-6)
  np.testing.assert_array_equal(second[1].position, [0, 0])
  assert after_two.levels[2] is None
  y_taught, _ = teach(x, after_two)
  assert not np.allclose(y_taught, y, atol=1e-3)


def test_flops_per_token_counts_mlps_and_inner_gradients():
  cms = _cms(chunk_sizes=(4, None), inner_lr=0.01)
  mlp = 4 * DIM * HIDDEN
  assert cms.flops_per_token(SEQ) == 2 * mlp + 2 * DIM * DIM + 6 * DIM * HIDDEN
  assert _cms(chunk_sizes=(4, None), inner_lr=0.01, signal="teach").flops_per_token(SEQ) == 2 * mlp


@pytest.mark.parametrize("kwargs, match", [
    (dict(chunk_sizes=()), "chunk_sizes"),
    (dict(chunk_sizes=(4, -1)), "chunk_sizes"),
    (dict(chunk_sizes=(2.5,)), "chunk_sizes"),
    (dict(chunk_sizes=(4,), hidden=0), "hidden"),
    (dict(chunk_sizes=(4, 8), inner_lr=(0.1,)), "inner_lr"),
    (dict(chunk_sizes=(4,), max_grad_norm=-1.0), "max_grad_norm"),
    (dict(chunk_sizes=(4,), signal="labels"), "signal must be 'associative'.* or 'teach'"),
    (dict(chunk_sizes=(4, 6), signal="teach"), "multiple of the smallest"),
    (dict(chunk_sizes=(None,), signal="teach"), "at least one adaptive level"),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
  kwargs = dict(dict(hidden=HIDDEN), **kwargs)
  with pytest.raises(ValueError, match=match):
    ContinuumMemory(DIM, rngs=nnx.Rngs(0), **kwargs)


def test_non_finite_inner_updates_are_reported_by_level():
  cms = _cms(chunk_sizes=(None, 4), inner_lr=0.01)
  state = cms.init_state(BATCH)
  check_finite(state)
  bad = state.replace(levels=(None, state.levels[1].replace(
      grad_out=state.levels[1].grad_out.at[0, 0, 0].set(jnp.nan))))
  with pytest.raises(FloatingPointError, match="CMS level 1.*grad_out"):
    check_finite(bad)
