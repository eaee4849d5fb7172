"""The Transformer baseline: the decoder scaffold with softmax attention and SwiGLU MLPs.

Pre-norm (RMSNorm) blocks, rotary positions, causal attention with an optional sliding
window (`window > 0`), SwiGLU MLP, untied output projection.
"""
import jax.numpy as jnp
from flax import nnx

from hope.attention import CausalSelfAttention
from hope.lm import Block, DecoderLM, check_shape
from hope.mlp import SwiGLU


def transformer(*, vocab_size: int, dim: int, num_layers: int, num_heads: int, mlp_dim: int,
                rngs: nnx.Rngs, head_dim: int = 0, window: int = 0,
                rope_base: float = 10_000.0, dropout_rate: float = 0.0,
                dtype: str = "float32") -> DecoderLM:
  """Builds the baseline. `head_dim = 0` means dim // num_heads."""
  head_dim = check_shape(vocab_size=vocab_size, dim=dim, num_layers=num_layers,
                         num_heads=num_heads, mlp_dim=mlp_dim, head_dim=head_dim)
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
  compute_dtype = jnp.dtype(dtype)
  blocks = [
      Block(dim,
            CausalSelfAttention(dim, num_heads, head_dim, rngs=rngs, window=window,
                                rope_base=rope_base, dtype=compute_dtype),
            SwiGLU(dim, mlp_dim, rngs=rngs, dtype=compute_dtype),
            rngs=rngs, dropout_rate=dropout_rate)
      for _ in range(num_layers)
  ]
  return DecoderLM(vocab_size, dim, blocks, rngs=rngs, dtype=compute_dtype)
