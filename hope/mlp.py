"""SwiGLU feed-forward block (Shazeer 2020, eq. 6): W_down (silu(x W_gate) * (x W_up))."""
import jax
import jax.numpy as jnp
from flax import nnx

from hope.layers import Dense


class SwiGLU(nnx.Module):
  """Maps x [..., embed] to [..., embed] through a hidden width `hidden`."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.gate = Dense((dim,), (hidden,), ("embed",), ("mlp",), rngs=rngs, dtype=dtype)
    self.up = Dense((dim,), (hidden,), ("embed",), ("mlp",), rngs=rngs, dtype=dtype)
    self.down = Dense((hidden,), (dim,), ("mlp",), ("embed",), rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))

  def flops_per_token(self, seq_len: int) -> float:
    del seq_len
    dim, hidden = self.gate.kernel.shape
    return 2 * 3 * dim * hidden
