"""The decoder language-model scaffold shared by every architecture in the zoo.

tokens -> embedding -> N pre-norm residual blocks -> RMSNorm -> logits. A block is
x <- x + mixer(norm(x)); x <- x + mlp(norm(x)), where the mixer is the sequence model
(softmax attention, a Titans memory, a self-modifying HOPE memory) and the mlp is the
per-token memory (a SwiGLU MLP, a Continuum Memory System, a product-key memory layer).
A Transformer is this scaffold with attention mixers and SwiGLU MLPs.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hope.layers import Dense, Embed, RMSNorm


class Block(nnx.Module):
  """x + dropout(mixer(norm(x))), then x + dropout(mlp(norm(x)))."""

  def __init__(self, dim: int, mixer: nnx.Module, mlp: nnx.Module, *, rngs: nnx.Rngs,
               dropout_rate: float = 0.0):
    self.mixer_norm = RMSNorm(dim, rngs=rngs)
    self.mixer = mixer
    self.mlp_norm = RMSNorm(dim, rngs=rngs)
    self.mlp = mlp
    self.dropout_rate = dropout_rate

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    keys = jax.random.split(rng) if rng is not None else (None, None)
    x = x + self._dropout(self.mixer(self.mixer_norm(x)), keys[0])
    return x + self._dropout(self.mlp(self.mlp_norm(x)), keys[1])

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
    """`rng` (a PRNG key) switches on dropout in blocks that have it; None is deterministic."""
    x = self.embed(tokens)
    keys = jax.random.split(rng, len(self.blocks)) if rng is not None else [None] * len(self.blocks)
    for block, key in zip(self.blocks, keys):
      x = block(x, key)
    return self.unembed(self.final_norm(x)).astype(jnp.float32)

  def flops_per_token(self, seq_len: int) -> float:
    """Forward-pass model FLOPs per token (matmuls and attention; x3 for a training step)."""
    dim, vocab = self.unembed.kernel.shape
    return sum(b.flops_per_token(seq_len) for b in self.blocks) + 2 * dim * vocab
