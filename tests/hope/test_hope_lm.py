"""HOPE's builder options: the self-modifying memories' inner rule, and the CMS taught by the
next-token loss against a per-piece loop (values and outer gradients), causal, streamable."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hope.cms_teach_reference import reference_teach
from hope.hope_lm import hope_lm
from tests.helpers import fast_and_reference

SHAPE = dict(vocab_size=64, dim=16, num_layers=2, num_heads=2, mlp_dim=32, chunk_size_memory=8,
             chunk_size_other=3)
# P = 4; level 0 changes every piece, level 1 every other piece. The clip (0.045 * dim * P)
# is below the norm of about half the pieces' gradients at these weights.
TEACH = dict(SHAPE, cms_chunk_sizes=(4, 8, None), cms_inner_lr=0.5, cms_max_grad_norm=0.045,
             cms_signal="teach")
BATCH, SEQ = 2, 16


def _tokens(seed=0, seq=SEQ):
  return jax.random.randint(jax.random.key(seed), (BATCH, seq), 0, SHAPE["vocab_size"])


def _loss(logits, tokens):
  log_p = jax.nn.log_softmax(logits[:, :-1])
  return -jnp.sum(jnp.take_along_axis(log_p, tokens[:, 1:, None], -1))


@pytest.fixture(scope="module")
def model():
  return hope_lm(rngs=nnx.Rngs(0), **TEACH)


@pytest.fixture(scope="module")
def forward(model):
  """model(tokens), jitted (one compile per shape)."""
  graphdef, params = nnx.split(model)
  run = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
  return lambda tokens: run(params, tokens)


def test_inner_rule_and_decay_reach_every_self_modifying_memory():
  model = hope_lm(rngs=nnx.Rngs(0), inner_rule="gd", inner_decay=False, **SHAPE)
  assert {(b.mixer.inner_rule, b.mixer.inner_decay) for b in model.blocks} == {("gd", False)}
  default = hope_lm(rngs=nnx.Rngs(0), **SHAPE)
  assert {(b.mixer.inner_rule, b.mixer.inner_decay) for b in default.blocks} == {("dgd", True)}
  assert default.teach_piece is None


def test_teach_signal_matches_the_per_piece_loop_values_and_outer_gradients(model):
  """Logits and the outer gradients of the summed next-token loss with respect to every
  parameter, with the per-piece clip engaged on some pieces and not on others. Three pieces:
  level 0 changes after each, level 1 after the second (read by the third)."""
  graphdef, params = nnx.split(model)
  tokens = _tokens(seq=12)

  def loss(params, fast):
    model = nnx.merge(graphdef, params)
    logits = model(tokens) if fast else reference_teach(model, tokens)
    return _loss(logits, tokens), logits

  (logits, grads), (logits_ref, grads_ref) = fast_and_reference(loss, params)
  chex.assert_trees_all_close(logits, logits_ref, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(grads, grads_ref, rtol=1e-4, atol=1e-6)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.max(jnp.abs(g))) > 0, f"no outer gradient reaches {path}"
  unclipped = hope_lm(rngs=nnx.Rngs(0), **dict(TEACH, cms_max_grad_norm=None))
  assert not np.allclose(nnx.jit(lambda m, t: m(t))(unclipped, tokens), logits, atol=1e-4)


def test_teach_signal_with_inner_lr_zero_is_a_cms_that_never_updates(forward):
  """cms_inner_lr = 0: the same logits as a model whose CMS levels are all frozen (same
  parameters: a taught level has no W_tgt); with the inner lr of `model`, different ones."""
  tokens = _tokens()
  still = hope_lm(rngs=nnx.Rngs(0), **dict(TEACH, cms_inner_lr=0.0))
  frozen = hope_lm(rngs=nnx.Rngs(0), **dict(SHAPE, cms_chunk_sizes=(None, None, None)))
  assert jax.tree.structure(nnx.state(still)) == jax.tree.structure(nnx.state(frozen))
  run = nnx.jit(lambda m, t: m(t))
  logits = run(still, tokens)
  chex.assert_trees_all_close(logits, run(frozen, tokens), rtol=1e-5, atol=1e-5)
  assert not np.allclose(forward(tokens), logits, atol=1e-3)


def test_teach_signal_is_causal(forward):
  tokens = _tokens()
  logits = forward(tokens)
  t = 9                                      # inside the third piece (8..11)
  changed = forward(tokens.at[:, t].set((tokens[:, t] + 1) % SHAPE["vocab_size"]))
  chex.assert_trees_all_close(changed[:, :t], logits[:, :t], atol=1e-6)
  assert not np.allclose(changed[:, t:t + 1], logits[:, t:t + 1])
  assert not np.allclose(changed[:, 12:], logits[:, 12:])   # the next pieces' weights moved


def test_streaming_in_two_calls_equals_one_call_and_levels_change_at_their_boundaries(model,
                                                                                        forward):
  tokens = _tokens()
  stream = nnx.jit(lambda m, t, s: m.stream(t, s))
  state = model.init_state(BATCH)
  first, mid = stream(model, tokens[:, :4], state)
  second, final = stream(model, tokens[:, 4:], mid)
  chex.assert_trees_all_close(jnp.concatenate([first, second], axis=1), forward(tokens),
                              rtol=1e-5, atol=1e-5)
  _, one_call = stream(model, tokens, state)
  chex.assert_trees_all_close(final, one_call, rtol=1e-5, atol=1e-5)
  start, after_piece = state[0][1].levels, mid[0][1].levels
  assert not np.allclose(after_piece[0].w_in, start[0].w_in)     # C = 4: changed, sum cleared
  assert np.all(np.asarray(after_piece[0].grad_in) == 0)
  np.testing.assert_array_equal(after_piece[1].w_in, start[1].w_in)   # C = 8: pending
  assert np.any(np.asarray(after_piece[1].grad_in) != 0)
  np.testing.assert_array_equal(after_piece[1].position, [4, 4])
  np.testing.assert_array_equal(one_call[0][1].levels[1].position, [0, 0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(mixer="attention", cms_signal="teach"), "mixer='attention'.*keeps no state"),
    (dict(cms_signal="next_token"), "cms_signal must be 'associative'.* or 'teach'"),
    (dict(cms_signal="teach", cms_chunk_sizes=(4, 6, None)), "multiple of the smallest"),
    (dict(cms_signal="teach", cms_chunk_sizes=(None,)), "at least one adaptive level"),
    (dict(inner_rule="delta"), "inner_rule must be 'dgd'.* or 'gd'"),
    (dict(inner_decay=None), "inner_decay must be True or False"),
    (dict(mixer="attention", inner_rule="gd"), "mixer='attention' has none"),
])
def test_bad_options_are_refused_by_name(kwargs, match):
  with pytest.raises(ValueError, match=match):
    hope_lm(rngs=nnx.Rngs(0), **dict(SHAPE, **kwargs))


def test_teach_signal_refuses_partial_pieces_and_padding_masks(model):
  with pytest.raises(ValueError, match=r"sequence length \(10\) must be a multiple of 4"):
    model(_tokens(seq=10))
  with pytest.raises(ValueError, match="no padding mask"):
    model.stream(_tokens(), model.init_state(BATCH), jnp.ones((BATCH, SEQ), bool))
