"""A slow, obviously correct Continuum Memory System: one token at a time, in a Python loop.

Each level's weights are held per sequence; token t goes through the levels with the weights
in force, each adaptive level adds jax.grad of its inner objective (`inner_loss`) to a
running sum (each token's gradient clipped to a norm of max_grad_norm * dim), and when the
level has seen a multiple of C_l tokens the sum times lr_l is subtracted from its weights
(eq. 71). It shares only the parameters with `ContinuumMemory` (no gradient formula, no
chunk layout), so comparing the two tests the chunked scan, the hand-written gradients and
the streaming clock. For tests only.
"""
import jax
import jax.numpy as jnp

from hope.cms import ContinuumMemory
from hope.neural_memory import clip_scale


def _mlp(w_in, w_out, scale, h):
  n = h * jax.lax.rsqrt(jnp.mean(h * h) + 1e-6) * scale
  return n, jax.nn.silu(n @ w_in) @ w_out


def inner_loss(weights: tuple, scale: jax.Array, target: jax.Array, h: jax.Array) -> jax.Array:
  """1/2 || MLP_weights(n) - n W_tgt ||^2 for one token h [dim], n = RMSNorm(h)."""
  n, m = _mlp(*weights, scale, h)
  return 0.5 * jnp.sum((m - n @ target) ** 2)


def reference_cms(cms: ContinuumMemory, x: jax.Array) -> tuple[jax.Array, list]:
  """x [batch, seq, dim] from the learned initial state -> (y, history), where history[t][l]
  is level l's (w_in, w_out) [batch, ...] after token t (None for frozen levels)."""
  batch, seq, _ = x.shape
  weights = [(jnp.broadcast_to(l.w_in[...], (batch,) + l.w_in.shape),
              jnp.broadcast_to(l.w_out[...], (batch,) + l.w_out.shape)) for l in cms.levels]
  pending = [jax.tree.map(jnp.zeros_like, w) for w in weights]
  grad = jax.jit(jax.vmap(jax.grad(inner_loss), in_axes=(0, None, None, 0)))
  mlp = jax.jit(jax.vmap(_mlp, in_axes=(0, 0, None, 0)))
  outputs, history = [], []
  for t in range(seq):
    h = x[:, t]
    for l, (level, chunk, lr) in enumerate(zip(cms.levels, cms.chunk_sizes, cms.inner_lrs)):
      scale = level.norm.scale[...]
      _, m = mlp(*weights[l], scale, h)
      if chunk is not None:
        g = grad(weights[l], scale, level.target[...], h)
        clip = cms.max_grad_norm and cms.max_grad_norm * cms.dim
        factor = clip_scale(sum(jnp.sum(a * a, axis=(1, 2)) for a in g), clip)
        g = jax.tree.map(lambda a: factor[:, None, None] * a, g)
        pending[l] = jax.tree.map(jnp.add, pending[l], g)
        if (t + 1) % chunk == 0:
          weights[l] = jax.tree.map(lambda w, s: w - lr * s, weights[l], pending[l])
          pending[l] = jax.tree.map(jnp.zeros_like, pending[l])
      h = h + m
    outputs.append(h)
    history.append([w if c is not None else None for w, c in zip(weights, cms.chunk_sizes)])
  return jnp.stack(outputs, axis=1), history
