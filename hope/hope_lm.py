"""HOPE language models (Nested Learning, arXiv sec. 8.3, eqs. 94-97).

Each block is a sequence mixer followed by a Continuum Memory System (CMS) on the residual
stream:
- HOPE: the self-modifying Titans memory (keys, values, learning rates and decays produced
  by memories that learn in context with Delta Gradient Descent), then CMS;
- HOPE-Attention: softmax attention in place of the self-modifying memory, isolating what the
  CMS contributes.

The CMS levels' inner learning rates are `cms_inner_lr / C_l` (the inner gradient is summed
over a chunk of C_l tokens). `cms_hidden = 0` sizes each level so that all levels together
hold about the parameters of the Transformer's SwiGLU MLP of width `mlp_dim`.

`cms_signal` chooses what drives the adaptive CMS levels (`hope.cms`): "associative", each
level's own L2 objective, or "teach", the model's next-token loss, read in pieces of the
smallest adaptive chunk size (`hope.lm`); the teach signal needs a sequence mixer that
carries its state across pieces, so HOPE-Attention refuses it.
"""
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from hope.attention import CausalSelfAttention
from hope.cms import SIGNALS, ContinuumMemory, teach_piece_of
from hope.fused_kernel import check_kernel
from hope.lm import Block, DecoderLM, check_shape
from hope.self_modifying import SelfModifyingMemory, check_inner_rule

MIXERS = ("self_modifying", "attention")


def hope_lm(*, vocab_size: int, dim: int, num_layers: int, num_heads: int, mlp_dim: int,
            rngs: nnx.Rngs, mixer: str = "self_modifying", head_dim: int = 0,
            chunk_size_memory: int = 16, chunk_size_other: int = 16,
            cms_chunk_sizes: Sequence[int | None] = (16, 64, None), cms_hidden: int = 0,
            cms_inner_lr: float = 1e-2, max_grad_norm: float | None = 1.0,
            cms_max_grad_norm: float | None = 8.0, window: int = 0, rope_base: float = 10_000.0,
            dtype: str = "float32", dropout_rate: float = 0.0, inner_rule: str = "dgd",
            inner_decay: bool = True, cms_signal: str = "associative",
            kernel: str = "xla") -> DecoderLM:
  """Builds HOPE (`mixer='self_modifying'`) or HOPE-Attention (`mixer='attention'`).

  `inner_rule` ('dgd' or 'gd') and `inner_decay` are the self-modifying memories' inner
  optimizer (`hope.self_modifying`); HOPE-Attention has no such memories and refuses values
  other than the defaults. `kernel="pallas"` runs the self-modifying memories' chunk updates
  as Pallas kernels (`hope.fused_kernel`).
  """
  head_dim = check_shape(vocab_size=vocab_size, dim=dim, num_layers=num_layers,
                         num_heads=num_heads, mlp_dim=mlp_dim, head_dim=head_dim)
  if mixer not in MIXERS:
    raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
  check_inner_rule("", inner_rule, inner_decay)
  check_kernel("", kernel)
  if mixer == "attention" and (inner_rule, inner_decay, kernel) != ("dgd", True, "xla"):
    raise ValueError(f"inner_rule ({inner_rule!r}), inner_decay ({inner_decay!r}) and kernel "
                     f"({kernel!r}) set the self-modifying memories' inner optimizer and its "
                     "kernel; mixer='attention' has none, so they must keep their defaults "
                     "('dgd', True, 'xla')")
  if not isinstance(cms_signal, str) or cms_signal not in SIGNALS:
    raise ValueError("cms_signal must be 'associative' (each CMS level's own L2 objective) or "
                     f"'teach' (the next-token loss), got {cms_signal!r}")
  if mixer == "attention" and cms_signal == "teach":
    raise ValueError("cms_signal='teach' reads the tokens in pieces and carries every block's "
                     "state from piece to piece; mixer='attention' (softmax attention over the "
                     "tokens of one call) keeps no state, so tokens would not see earlier "
                     "pieces: use mixer='self_modifying'")
  chunks = tuple(cms_chunk_sizes)
  # The teach signal calls the mixers on pieces of P tokens only, which saves chunk steps.
  piece = teach_piece_of(chunks, cms_signal) or 1
  hidden = cms_hidden or max(1, 3 * mlp_dim // (2 * max(1, len(chunks))))
  lrs = tuple(cms_inner_lr / c if c else 0.0 for c in chunks)
  compute_dtype = jnp.dtype(dtype)

  def sequence_mixer():
    if mixer == "attention":
      return CausalSelfAttention(dim, num_heads, head_dim, rngs=rngs, window=window,
                                 rope_base=rope_base, dtype=compute_dtype)
    return SelfModifyingMemory(dim, num_heads=num_heads, head_dim=head_dim,
                               chunk_size_memory=chunk_size_memory,
                               chunk_size_other=chunk_size_other, max_grad_norm=max_grad_norm,
                               inner_rule=inner_rule, inner_decay=inner_decay, piece=piece,
                               kernel=kernel, rngs=rngs, dtype=compute_dtype)

  blocks = [
      Block(dim, sequence_mixer(),
            ContinuumMemory(dim, hidden=hidden, chunk_sizes=chunks, inner_lr=lrs,
                            max_grad_norm=cms_max_grad_norm, signal=cms_signal, rngs=rngs,
                            dtype=compute_dtype),
            rngs=rngs, dropout_rate=dropout_rate, mlp_owns_residual=True)
      for _ in range(num_layers)
  ]
  return DecoderLM(vocab_size, dim, blocks, rngs=rngs, dtype=compute_dtype)
