"""The decoder language-model scaffold shared by every architecture in the zoo.

tokens -> embedding -> N pre-norm residual blocks -> RMSNorm -> logits. A block is
x <- x + mixer(norm(x)); x <- x + mlp(norm(x)), where the mixer is the sequence model
(softmax attention, a Titans memory, a self-modifying HOPE memory) and the mlp is the
per-token memory (a SwiGLU MLP, a Continuum Memory System, a product-key memory layer).
A Transformer is this scaffold with attention mixers and SwiGLU MLPs.

Stateful parts (memories that learn in context) have `init_state(batch_size)` and
`__call__(x, state=None, mask=None) -> (y, state)`; stateless parts have `__call__(x) -> y`.
`DecoderLM.__call__` starts every sequence from the learned initial states (training);
`DecoderLM.stream` carries the states across calls, so a long document can be read piece by
piece, and `init_state` resets them between documents.
"""
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from hope.layers import Dense, Embed, RMSNorm


def check_shape(*, vocab_size: int, dim: int, num_layers: int, num_heads: int, mlp_dim: int,
                head_dim: int = 0) -> int:
  """Validates an LM builder's sizes; returns head_dim (0 means dim // num_heads)."""
  for name, value in dict(vocab_size=vocab_size, dim=dim, num_layers=num_layers,
                          num_heads=num_heads, mlp_dim=mlp_dim).items():
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  if head_dim:
    return head_dim
  if dim % num_heads:
    raise ValueError(f"num_heads ({num_heads}) must divide dim ({dim}) when head_dim is 0")
  return dim // num_heads


def is_stateful(module) -> bool:
  return hasattr(module, "init_state")


def apply(module, x: jax.Array, state=None, mask=None) -> tuple[jax.Array, Any]:
  """Calls a stateful or stateless part alike: returns (output, new state or None)."""
  if is_stateful(module):
    return module(x, state, mask)
  return module(x), None


class Block(nnx.Module):
  """x + dropout(mixer(norm(x))), then x + dropout(mlp(norm(x))).

  With `mlp_owns_residual` the MLP maps the residual stream to itself (x <- mlp(x)): for a
  Continuum Memory System, whose levels carry their own pre-norms and residuals.
  """

  def __init__(self, dim: int, mixer: nnx.Module, mlp: nnx.Module, *, rngs: nnx.Rngs,
               dropout_rate: float = 0.0, mlp_owns_residual: bool = False):
    self.mixer_norm = RMSNorm(dim, rngs=rngs)
    self.mixer = mixer
    self.mlp_norm = None if mlp_owns_residual else RMSNorm(dim, rngs=rngs)
    self.mlp = mlp
    self.dropout_rate = dropout_rate

  def init_state(self, batch_size: int) -> tuple:
    return tuple(m.init_state(batch_size) if is_stateful(m) else None
                 for m in (self.mixer, self.mlp))

  def __call__(self, x: jax.Array, rng: jax.Array | None = None, state: tuple | None = None,
               mask: jax.Array | None = None) -> tuple[jax.Array, tuple]:
    mixer_state, mlp_state = state if state is not None else (None, None)
    keys = jax.random.split(rng) if rng is not None else (None, None)
    y, mixer_state = apply(self.mixer, self.mixer_norm(x), mixer_state, mask)
    x = x + self._dropout(y, keys[0])
    if self.mlp_norm is None:
      x, mlp_state = apply(self.mlp, x, mlp_state, mask)
      return x, (mixer_state, mlp_state)
    y, mlp_state = apply(self.mlp, self.mlp_norm(x), mlp_state, mask)
    return x + self._dropout(y, keys[1]), (mixer_state, mlp_state)

  def _dropout(self, y: jax.Array, key: jax.Array | None) -> jax.Array:
    if key is None or not self.dropout_rate:
      return y
    keep = jax.random.bernoulli(key, 1.0 - self.dropout_rate, y.shape)
    return jnp.where(keep, y / (1.0 - self.dropout_rate), 0).astype(y.dtype)

  def flops_per_token(self, seq_len: int) -> float:
    return self.mixer.flops_per_token(seq_len) + self.mlp.flops_per_token(seq_len)


class DecoderLM(nnx.Module):
  """Maps tokens [batch, seq] (int) to next-token logits [batch, seq, vocab] (float32)."""

  def __init__(self, vocab_size: int, dim: int, blocks: Sequence[Block], *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    self.embed = Embed(vocab_size, dim, rngs=rngs, dtype=dtype)
    self.blocks = nnx.List(blocks)
    self.final_norm = RMSNorm(dim, rngs=rngs)
    self.unembed = Dense((dim,), (vocab_size,), ("embed",), ("vocab",), rngs=rngs, dtype=dtype)

  def __call__(self, tokens: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Logits, every memory starting from its learned initial state. `rng` switches on dropout."""
    return self._run(tokens, rng, None, None)[0]

  def init_state(self, batch_size: int) -> tuple:
    """The in-context state of every block at the start of a document."""
    return tuple(block.init_state(batch_size) for block in self.blocks)

  def stream(self, tokens: jax.Array, state: tuple,
             mask: jax.Array | None = None) -> tuple[jax.Array, tuple]:
    """Logits for the next piece of a document and the carried state; `mask` marks padding (0)."""
    return self._run(tokens, None, state, mask)

  def _run(self, tokens, rng, state, mask):
    chex.assert_rank(tokens, 2)
    x = self.embed(tokens)
    keys = jax.random.split(rng, len(self.blocks)) if rng is not None else [None] * len(self.blocks)
    states = state if state is not None else [None] * len(self.blocks)
    new_states = []
    for block, key, block_state in zip(self.blocks, keys, states):
      x, block_state = block(x, key, block_state, mask)
      new_states.append(block_state)
    return self.unembed(self.final_norm(x)).astype(jnp.float32), tuple(new_states)

  def flops_per_token(self, seq_len: int) -> float:
    """Forward-pass model FLOPs per token (matmuls and attention; x3 for a training step)."""
    dim, vocab = self.unembed.kernel.shape
    return sum(b.flops_per_token(seq_len) for b in self.blocks) + 2 * dim * vocab
