"""Memory-layer language models: the decoder scaffold with product-key memories in place of
chosen blocks' MLPs (Lample et al. 2019, sec. 4; Berges et al. 2024, "Memory+").

Blocks listed in `memory_layers` read a product-key memory instead of their SwiGLU MLP; with
`shared_values` they all read one value pool (Memory+'s shared memory), otherwise each has
its own. Attention, norms and the other MLPs are the Transformer baseline's.
"""
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from hope.attention import CausalSelfAttention
from hope.lm import Block, DecoderLM, check_shape
from hope.mlp import SwiGLU
from memory_layers.product_key_memory import ProductKeyMemory
from memory_layers.value_pool import ValuePool


def memory_lm(*, vocab_size: int, dim: int, num_layers: int, num_heads: int, mlp_dim: int,
              memory_layers: Sequence[int], num_slots: int, rngs: nnx.Rngs,
              memory_heads: int = 4, key_dim: int = 128, top_k: int = 32,
              gated_output: bool = True, query_norm: bool = True, shared_values: bool = True,
              head_dim: int = 0, window: int = 0, rope_base: float = 10_000.0,
              dropout_rate: float = 0.0, dtype: str = "float32",
              sharding_rules=None) -> DecoderLM:
  """Builds the LM; `sharding_rules` (logical -> mesh axes) lets the value reads run sharded."""
  head_dim = check_shape(vocab_size=vocab_size, dim=dim, num_layers=num_layers,
                         num_heads=num_heads, mlp_dim=mlp_dim, head_dim=head_dim)
  layers = tuple(memory_layers)
  bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < num_layers]
  if not layers or bad:
    raise ValueError(f"memory_layers must be a non-empty list of block indices in "
                     f"[0, {num_layers}), got {list(layers)}")
  compute_dtype = jnp.dtype(dtype)
  pool = ValuePool(num_slots, dim, rngs=rngs) if shared_values else None

  def mlp(i):
    if i not in layers:
      return SwiGLU(dim, mlp_dim, rngs=rngs, dtype=compute_dtype)
    values = pool if shared_values else ValuePool(num_slots, dim, rngs=rngs)
    return ProductKeyMemory(dim, values, num_heads=memory_heads, key_dim=key_dim, top_k=top_k,
                            gated_output=gated_output, query_norm=query_norm,
                            sharding_rules=sharding_rules, rngs=rngs)

  blocks = [
      Block(dim,
            CausalSelfAttention(dim, num_heads, head_dim, rngs=rngs, window=window,
                                rope_base=rope_base, dtype=compute_dtype),
            mlp(i), rngs=rngs, dropout_rate=dropout_rate)
      for i in range(num_layers)
  ]
  return DecoderLM(vocab_size, dim, blocks, rngs=rngs, dtype=compute_dtype)
