"""Incremental decoding (`DecoderLM.decode`) equals the full forward for every architecture
that decodes, over calls of any lengths; sampling's cuts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import configs
from runtime import context_state, generation, models

SPREAD_OVER_WORKERS = True
SHAPE = dict(dim=32, num_layers=2, num_heads=2, mlp_dim=64)
# Calls of 6, 1, 1, 7 and 5 tokens: the memories' chunk clocks (4 and 8 tokens) and MAC's
# segments (8) end mid-call, and the sliding window's ring buffer (4) wraps.
PIECES = (6, 1, 1, 7, 5)
CONTEXT = 11        # tokens read at batch 1, then continued by two rows
TOLERANCE = 1e-4   # max |logit difference|; float32 rounding of different summation orders


def _model(name: str, **overrides):
  model = configs.lm_config(name, "tiny").model.to_dict()
  model.update(SHAPE, **overrides)
  return models.build(model, 0)


def _decoded(model, tokens):
  state = model.init_decode_state(tokens.shape[0], tokens.shape[1])
  outs, start = [], 0
  for size in PIECES:
    logits, state = model.decode(tokens[:, start:start + size], state)
    outs.append(logits)
    start += size
  return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("name, overrides", [
    ("transformer", {}),
    ("transformer", dict(window=4)),
    ("titans_lmm", dict(chunk_size=4)),
    ("titans_mag", dict(chunk_size=4, window=4)),
    ("titans_mal", dict(chunk_size=4, window=4)),
    ("titans_mac", dict(chunk_size=4, segment_len=8)),
    ("hope", dict(chunk_size_memory=4, chunk_size_other=4, cms_chunk_sizes=(4, 8, None))),
    ("hope_attention", dict(cms_chunk_sizes=(4, 8, None))),
    ("memory_lm", dict(memory_layers=(1,))),
])
def test_incremental_decoding_equals_the_full_forward(name, overrides):
  """Also: a context read at batch 1, broadcast to the batch (`context_state.batched`) and
  continued by each row's own tokens equals the full forward over [context | row]."""
  model = _model(name, **overrides)
  tokens = jax.random.randint(jax.random.key(1), (2, sum(PIECES)), 0, 256)
  tokens = tokens.at[1, :CONTEXT].set(tokens[0, :CONTEXT])     # both rows share the context

  def both(m, t):
    state = m.init_decode_state(1, t.shape[1])
    _, state = m.decode(t[:1, :CONTEXT], state)
    rest, _ = m.decode(t[:, CONTEXT:], context_state.batched(m, state, t.shape[0]))
    return m(t), _decoded(m, t), rest

  full, decoded, rest = nnx.jit(both)(model, tokens)  # one compile
  np.testing.assert_array_less(np.abs(np.asarray(decoded - full)), TOLERANCE)
  np.testing.assert_array_less(np.abs(np.asarray(rest - full[:, CONTEXT:])), TOLERANCE)


def test_a_sliding_window_cache_holds_the_window_only():
  model = _model("transformer", window=4)
  cache = model.init_decode_state(1, 1000)[0][0]
  assert cache.keys.shape[1] == 4


def test_a_model_taught_by_the_next_token_loss_cannot_decode():
  taught = _model("hope", cms_signal="teach", cms_chunk_sizes=(4, 8, None))
  with pytest.raises(ValueError, match="one token at a time"):
    taught.init_decode_state(1, 64)


def test_sampling_cuts():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
  draw = lambda **kw: np.asarray(generation.sample(logits, jax.random.key(0),
                                                   generation.Sampling(**kw)))
  assert (draw(temperature=0) == 0).all()
  assert (draw(top_k=1) == 0).all()
  assert (draw(top_p=0.4) == 0).all()            # 0.5 alone reaches 0.4
  assert set(draw(top_p=0.7)) == {0, 1}          # 0.5 + 0.3 reaches 0.7
  assert set(draw(top_k=3)) == {0, 1, 2}
  counts = np.bincount(draw(), minlength=4) / 4000
  np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
  cold = np.bincount(draw(temperature=0.5), minlength=4) / 4000   # p^2, renormalised
  np.testing.assert_allclose(cold, np.array([25, 9, 2.25, 0.25]) / 36.5, atol=0.03)


@pytest.mark.parametrize("bad, match", [(dict(temperature=-1.0), "temperature"),
                                        (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p")])
def test_sampling_settings_are_checked(bad, match):
  with pytest.raises(ValueError, match=match):
    generation.Sampling(**bad).check()
