"""A memory state saved with orbax in the middle of a streamed document restores and the
stream continues exactly as if it had never stopped."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from hope.hope_lm import hope_lm
from hope.titans import titans

SHAPE = dict(vocab_size=256, dim=16, num_layers=1, num_heads=2, mlp_dim=32)


@pytest.mark.parametrize("build", [
    lambda: hope_lm(rngs=nnx.Rngs(0), chunk_size_memory=4, chunk_size_other=4,
                    cms_chunk_sizes=(4, 8), **SHAPE),
    lambda: titans(variant="mac", rngs=nnx.Rngs(0), window=6, segment_len=8,
                   persistent_tokens=2, chunk_size=4, **SHAPE),
], ids=["hope", "titans_mac"])
def test_state_saved_mid_document_continues_identically(build, tmp_path):
  model = build()
  stream = nnx.jit(lambda m, piece, state: m.stream(piece, state))
  tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, 256)
  _, state = stream(model, tokens[:, :16], model.init_state(2))
  expected, expected_state = stream(model, tokens[:, 16:], state)

  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "state", state)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(tmp_path / "state", abstract)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  logits, final_state = stream(model, tokens[:, 16:], restored)
  np.testing.assert_array_equal(logits, expected)
  jax.tree.map(np.testing.assert_array_equal, final_state, expected_state)
