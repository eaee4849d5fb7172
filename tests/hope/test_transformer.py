"""The Transformer's parts against slow, obviously-correct references."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hope.attention import (CausalSelfAttention, causal_attention, masked_attention,
                            mean_attended_positions)
from hope.rotary import apply_rotary
from hope.transformer import transformer


def _reference_attention(layer, x, window):
  """softmax(q k^T / sqrt(d) + mask) v with the mask written out position by position."""
  seq = x.shape[1]
  pos = jnp.arange(seq)
  q = apply_rotary(layer.query(x), pos)
  k = apply_rotary(layer.key(x), pos)
  v = layer.value(x)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  allowed = np.array([[s <= t and (not window or t - s < window) for s in range(seq)]
                      for t in range(seq)])
  weights = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
  return layer.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v))


@pytest.mark.parametrize("window", [0, 1, 5])
def test_attention_matches_masked_softmax_reference(window):
  layer = CausalSelfAttention(16, 2, 8, rngs=nnx.Rngs(0), window=window)
  x = jax.random.normal(jax.random.key(1), (2, 12, 16))
  chex.assert_trees_all_close(layer(x), _reference_attention(layer, x, window), atol=1e-5)


@pytest.mark.parametrize("seq, block", [(32, 4), (24, 4), (12, 64)])
def test_blockwise_causal_attention_matches_masked_softmax(seq, block):
  """The dyadic blocks (32 = 4 x 2^3: three levels; 24 = 6 x 2^2; 12: one block) against the
  masked softmax over the whole score matrix: values and gradients."""
  q, k, v, g = jax.random.normal(jax.random.key(2), (4, 2, seq, 3, 8))
  mask = jnp.tril(jnp.ones((seq, seq), bool))
  losses = [lambda q, k, v: jnp.sum(causal_attention(q, k, v, block) * g),
            lambda q, k, v: jnp.sum(masked_attention(q, k, v, mask) * g)]
  (fast, fast_grads), (slow, slow_grads) = [jax.value_and_grad(f, argnums=(0, 1, 2))(q, k, v)
                                            for f in losses]
  chex.assert_trees_all_close(fast, slow, rtol=1e-5)
  chex.assert_trees_all_close(fast_grads, slow_grads, rtol=1e-4, atol=1e-5)


def test_lm_is_causal_and_shaped():
  model = transformer(vocab_size=256, dim=32, num_layers=2, num_heads=4, mlp_dim=64,
                      rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(0), (2, 10), 0, 256)
  logits = model(tokens)
  chex.assert_shape(logits, (2, 10, 256))
  changed = model(tokens.at[:, 6:].set(7))
  chex.assert_trees_all_close(changed[:, :6], logits[:, :6], atol=1e-6)
  assert not np.allclose(changed[:, 6:], logits[:, 6:])


def test_rotary_scores_depend_on_relative_position():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
  score = lambda p, s: float(jnp.sum(apply_rotary(q, jnp.array([p])) * apply_rotary(k, jnp.array([s]))))
  np.testing.assert_allclose(score(3, 1), score(10, 8), rtol=1e-5)


def test_mean_attended_positions_counts_the_mask():
  for seq, window in [(10, 0), (10, 3), (10, 20)]:
    expected = np.mean([min(t, window) if window else t for t in range(1, seq + 1)])
    assert mean_attended_positions(seq, window) == pytest.approx(expected)


def test_bad_shapes_are_refused():
  with pytest.raises(ValueError, match="num_heads"):
    transformer(vocab_size=256, dim=30, num_layers=1, num_heads=4, mlp_dim=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="window"):
    CausalSelfAttention(8, 2, 4, rngs=nnx.Rngs(0), window=-1)
