"""Incremental decoding (`DecoderLM.decode`) equals the full forward for every architecture
that decodes, over calls of any lengths; sampling's cuts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs
from runtime import generation, models

SPREAD_OVER_WORKERS = True
SHAPE = dict(dim=32, num_layers=2, num_heads=2, mlp_dim=64)
# Calls of 13, 1, 1, 16 and 9 tokens: chunk clocks (16 for the memories) end mid-chunk,
# and the sliding windows' ring buffers wrap.
PIECES = (13, 1, 1, 16, 9)
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
    ("transformer", dict(window=8)),
    ("titans_lmm", {}),
    ("titans_mag", {}),
    ("titans_mal", {}),
    ("hope", {}),
    ("hope_attention", {}),
    ("memory_lm", dict(memory_layers=(1,))),
])
def test_incremental_decoding_equals_the_full_forward(name, overrides):
  model = _model(name, **overrides)
  tokens = jax.random.randint(jax.random.key(1), (2, sum(PIECES)), 0, 256)
  full = model(tokens)
  np.testing.assert_array_less(np.abs(np.asarray(_decoded(model, tokens) - full)), TOLERANCE)


def test_a_sliding_window_cache_holds_the_window_only():
  model = _model("transformer", window=8)
  cache = model.init_decode_state(1, 1000)[0][0]
  assert cache.keys.shape[1] == 8


def test_models_that_cannot_decode_say_why():
  with pytest.raises(ValueError, match="MAC cannot decode"):
    _model("titans_mac").init_decode_state(1, 64)
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
