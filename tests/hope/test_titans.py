"""Titans variants: causal, streamable, and shaped like the scaffold expects."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hope.titans import mac_mask, prefix_window_mask, titans

KW = dict(vocab_size=256, dim=16, num_layers=1, num_heads=2, mlp_dim=32, window=6,
          segment_len=8, persistent_tokens=2, chunk_size=4)


@pytest.fixture(scope="module", params=["lmm", "mac", "mag", "mal"])
def model(request):
  return titans(variant=request.param, rngs=nnx.Rngs(0), **KW)


def test_causal(model):
  tokens = jax.random.randint(jax.random.key(0), (2, 24), 0, 256)
  logits = model(tokens)
  chex.assert_shape(logits, (2, 24, 256))
  changed = model(tokens.at[:, 13:].set(3))
  chex.assert_trees_all_close(changed[:, :13], logits[:, :13], atol=1e-5)
  assert not np.allclose(changed[:, 13:], logits[:, 13:])


def test_streaming_equals_one_call_for_memory_only_context(model):
  """LMM and MAC keep all cross-piece context in the memory state: pieces == one call.
  MAG and MAL's sliding-window attention sees only the current piece when streaming."""
  tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 256)
  whole = model(tokens)
  state = model.init_state(2)
  first, state = model.stream(tokens[:, :16], state)
  second, _ = model.stream(tokens[:, 16:], state)
  streamed = jnp.concatenate([first, second], axis=1)
  chex.assert_trees_all_close(streamed[:, :16], whole[:, :16], atol=1e-5)
  variant = model.blocks[0].mixer.variant
  if variant in ("lmm", "mac"):
    chex.assert_trees_all_close(streamed, whole, atol=1e-4)


def test_masks():
  np.testing.assert_array_equal(prefix_window_mask(1, 3, 2).astype(int),
                                [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1]])
  np.testing.assert_array_equal(mac_mask(1, 2).astype(int), [[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]])


def test_bad_arguments():
  with pytest.raises(ValueError, match="segment_len"):
    titans(variant="mac", rngs=nnx.Rngs(0), **{**KW, "segment_len": 6})
  with pytest.raises(ValueError, match="variant"):
    titans(variant="xyz", rngs=nnx.Rngs(0), **KW)
