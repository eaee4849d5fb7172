"""Rotary position embeddings (Su et al. 2021, RoFormer eq. 34).

Pairs of channels (i, i + d/2) of each head are rotated by the angle p * base^(-2i/d) at
position p, so that q_p . k_s depends on p - s only.
"""
import jax
import jax.numpy as jnp


def apply_rotary(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
  """Rotates x [..., seq, heads, head_dim] by positions [..., seq]; head_dim must be even."""
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"rotary positions need an even head_dim, got {head_dim}")
  half = head_dim // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., :, None, None].astype(jnp.float32) * inv_freq  # [..., seq, 1, half]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
