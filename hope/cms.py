"""Continuum Memory System (Nested Learning, NeurIPS eqs. 30-31 / arXiv eqs. 70-71).

A chain of K residual MLP levels, y = MLP^(K)(... MLP^(1)(x)) (eq. 70), level l being

    h <- h + W_out^(l) silu(W_in^(l) RMSNorm(h)).

Level l has a chunk size C_l. Its weights change only at chunk boundaries, i.e. after the
stream has consumed a multiple of C_l tokens, by the inner gradient summed over the chunk's
C_l tokens and applied once (eq. 71):

    theta <- theta - lr_l * sum_{t in chunk} grad_theta l(theta; h_t),

where every token of a chunk sees the chunk-start weights, so a chunk is computed in
parallel and chunks follow each other in a `lax.scan`. A level with chunk size None (or 0)
never changes in context: it is an ordinary MLP that only the outer optimizer trains (the
lowest-frequency level; a Transformer's MLP is the K = 1 case). The initial weights of every
level are outer parameters, so the outer loop meta-learns them through the in-context
updates.

Inner signal (`signal`). Eq. 71 leaves the "error component" open; there are two.

"associative" (the default): the L2 associative objective of Titans (eq. 12) with the level's
normalised input as the key and a learned linear projection of it as the value,

    l(theta; h_t) = 1/2 || MLP_theta(n_t) - n_t W_tgt ||^2,     n_t = RMSNorm(h_t),

with W_tgt (per level) an outer parameter. Each level updates inside this module from its own
activations (three matmuls the size of the MLP's and one dim x dim projection per token, no
second pass through the network); token t enters the weights only at the boundary after it,
so outputs depend on earlier tokens only, and no labels are needed.

"teach": the model's own next-token loss. Inside a call the module only applies the weights
in force (no update of its own, no W_tgt); `hope.lm.DecoderLM` reads the stream in pieces of
P tokens (`teach_piece`: the smallest adaptive chunk size, of which every adaptive chunk size
must be a multiple), takes the gradient of the piece's summed next-token cross-entropy
L_piece (positions whose next token lies in the same piece) with respect to every level's
weights in force, and hands it to `teach`, which adds it to the level's pending sum and, at
the level's boundary, applies

    theta <- theta - lr_l * sum_{pieces of the chunk} grad_theta L_piece.

Its targets are the stream's own next tokens, so it too needs no labels beyond the input and
stays causal (the weights a token sees depend on earlier pieces only); it costs a backward
pass of the whole model per piece and needs sequence mixers that carry their state across
pieces. The outer
gradient treats the in-context update as a constant: the weights in force are
theta_0 - stop_gradient(sum of updates), so the outer optimizer trains the initial weights
theta_0 through them (first order) and does not differentiate through the inner gradient.

Streaming is exact for pieces of any length: the state holds each level's weights in force,
the gradient summed over the unfinished chunk and the position in it; masked tokens are
skipped as if absent (see `hope.stream_chunks`). Outputs at masked positions are zero. (With
the teach signal a call changes no state; `teach` advances the clocks by whole pieces.)

The inner learning rates multiply a sum over C_l tokens: choose lr_l ~ base / C_l.

Inner-gradient clip. Each token's gradient (over W_in and W_out) is clipped to a norm of
`max_grad_norm * dim` before it enters the chunk's sum: the level's inputs are RMS-normalised
(|n_t|^2 = dim), so gradient norms scale with dim. Plain gradient descent on this objective
is stable only while lr times its curvature (which grows with |silu(n W_in)|^2 and |W_out|^2)
stays below 2; trained on multi-query recall, HOPE-Attention's CMS weights outgrew that and
the level's output overflowed (76 of 120 training steps non-finite). Clipped, a chunk moves
the weights by at most lr * C * max_grad_norm * dim. The default 8 leaves ordinary tokens
alone: HOPE and HOPE-Attention trained on the default corpus (dim 128) have per-token norms
of 0.8 dim at the median and 2.3 dim at the most, on text and on recall sequences alike.
The clip is per token, so the chunked form and the per-token reference agree exactly. With the
teach signal there are no per-token gradients: each piece's gradient of a level (over W_in
and W_out, per sequence) is clipped to a norm of max_grad_norm * dim * P, so a chunk again
moves the weights by at most lr * C * max_grad_norm * dim.
"""
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from hope.layers import RMSNorm, first_nonfinite, param, silu_grad
from hope.neural_memory import check_clip_norm, clip_scale
from hope.stream_chunks import chunk_grid, compact, compaction, from_chunks, to_chunks, uncompact

SIGNALS = ("associative", "teach")


@struct.dataclass
class CMSLevelState:
  """In-context state of one adaptive level, each array with a leading batch axis.

  w_in [dim, hidden], w_out [hidden, dim]: the weights in force (set at the last boundary);
  grad_in, grad_out: the inner gradient summed over the tokens of the unfinished chunk;
  position (int32): how many tokens of that chunk the stream has consumed.
  """
  w_in: jax.Array
  w_out: jax.Array
  grad_in: jax.Array
  grad_out: jax.Array
  position: jax.Array


@struct.dataclass
class CMSState:
  """One `CMSLevelState` per level, None for levels that never change in context."""
  levels: tuple


class CMSLevel(nnx.Module):
  """One level: RMSNorm, the MLP's initial weights and, when it learns from the associative
  objective, the value projection W_tgt."""

  def __init__(self, dim: int, hidden: int, with_target: bool, *, rngs: nnx.Rngs):
    fan_in = lambda n: (lambda key, shape, dt: n ** -0.5 * jax.random.truncated_normal(
        key, -2.0, 2.0, shape, dt))
    self.norm = RMSNorm(dim, rngs=rngs)
    self.w_in = param(rngs, fan_in(dim), (dim, hidden), ("embed", "mlp"))
    self.w_out = param(rngs, fan_in(hidden), (hidden, dim), ("mlp", "embed"))
    self.target = param(rngs, fan_in(dim), (dim, dim), ("embed", None)) if with_target else None


def _matmul(a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _rms_norm(h: jax.Array, scale: jax.Array) -> jax.Array:
  h = h.astype(jnp.float32)
  return h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6) * scale


def _branch(w_in, w_out, scale, h, dtype):
  """n = RMSNorm(h), z = n W_in, a = silu(z), m = a W_out (the level adds m to h)."""
  n = _rms_norm(h, scale)
  z = _matmul(n, w_in, dtype)
  a = jax.nn.silu(z)
  return n, z, a, _matmul(a, w_out, dtype)


def _adaptive_level(level: dict, lr: float, chunk: int, h: jax.Array, count: jax.Array,
                    state: CMSLevelState, dtype, at_boundary: bool,
                    max_grad_norm: float | None) -> tuple[jax.Array, CMSLevelState]:
  """One sequence through an adaptive level: a scan over its chunks (eq. 71), each token's
  inner gradient clipped to a norm of max_grad_norm * dim; `at_boundary`: the state is fresh."""
  grid = chunk_grid(count, state.position, chunk, h.shape[0], at_boundary=at_boundary)

  def step(carry, xs):
    w_in, w_out, g_in, g_out = carry
    u, valid, complete = xs
    n, z, a, m = _branch(w_in, w_out, level["scale"], u, dtype)
    err = (m - _matmul(n, level["target"], dtype)) * valid[:, None]   # d l / d m per token
    delta = _matmul(err, w_out.T, dtype) * silu_grad(z)              # d l / d z per token
    # ||a_t err_t^T||^2 + ||n_t delta_t^T||^2: the token's squared gradient norm.
    squared = (jnp.sum(a * a, -1) * jnp.sum(err * err, -1)
               + jnp.sum(n * n, -1) * jnp.sum(delta * delta, -1))
    scale = clip_scale(squared, max_grad_norm and max_grad_norm * h.shape[-1])[:, None]
    g_out = g_out + _matmul(a.T, scale * err, dtype)
    g_in = g_in + _matmul(n.T, scale * delta, dtype)
    w_in = jnp.where(complete, w_in - lr * g_in, w_in)
    w_out = jnp.where(complete, w_out - lr * g_out, w_out)
    g_in, g_out = jnp.where(complete, 0.0, g_in), jnp.where(complete, 0.0, g_out)
    return (w_in, w_out, g_in, g_out), u + m

  carry = (state.w_in, state.w_out, state.grad_in, state.grad_out)
  carry, y = jax.lax.scan(jax.checkpoint(step), carry,
                          (to_chunks(h, grid), grid.valid, grid.complete))
  return from_chunks(y, grid), CMSLevelState(*carry, position=grid.next_position)


def teach_piece_of(chunk_sizes: Sequence[int | None], signal: str) -> int | None:
  """P, the length of the pieces the teach signal reads (the smallest adaptive chunk size),
  or None with the associative signal. ValueError, naming the argument, unless chunk_sizes
  are CMS chunk sizes, signal is one of SIGNALS and, with the teach signal, there is an
  adaptive level and every adaptive chunk size is a multiple of P."""
  if isinstance(chunk_sizes, (str, bytes)) or not isinstance(chunk_sizes, Sequence) \
      or not chunk_sizes:
    raise ValueError("ContinuumMemory chunk_sizes must be a non-empty sequence of chunk "
                     f"sizes (positive integers, or None/0 for a frozen level), got "
                     f"{chunk_sizes!r}")
  for c in chunk_sizes:
    if c is not None and (isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0):
      raise ValueError("ContinuumMemory chunk_sizes entries must be positive integers or "
                       f"None/0 (a level that never changes in context), got {c!r} in "
                       f"{list(chunk_sizes)}")
  if not isinstance(signal, str) or signal not in SIGNALS:
    raise ValueError("ContinuumMemory signal must be 'associative' (each level's own L2 "
                     f"objective) or 'teach' (the next-token loss), got {signal!r}")
  if signal == "associative":
    return None
  adaptive = [int(c) for c in chunk_sizes if c]
  if not adaptive or any(c % min(adaptive) for c in adaptive):
    raise ValueError("ContinuumMemory with signal='teach' needs at least one adaptive level and "
                     "every adaptive chunk size a multiple of the smallest (the pieces the "
                     f"teach signal reads), got chunk_sizes {list(chunk_sizes)}")
  return min(adaptive)


class ContinuumMemory(nnx.Module):
  """Maps x [batch, seq, dim] to [batch, seq, dim] through the CMS levels.

  Args:
    dim: width of the input and output.
    hidden: hidden width of every level's MLP.
    chunk_sizes: one entry per level, applied in order: a positive chunk size C_l (the
      level's weights change every C_l tokens) or None / 0 (never changes in context).
    inner_lr: the inner learning rate, one float for all levels or one per level.
    max_grad_norm: each token's inner gradient (over W_in and W_out) is clipped to a norm
      of max_grad_norm * dim before it is summed (None: no clip); with the teach signal,
      each piece's gradient to max_grad_norm * dim * P. See the module docstring.
    signal: what drives the adaptive levels: "associative" (each level's own L2 objective,
      updated inside the call) or "teach" (the model's next-token loss, through `teach`).
    dtype: matmul operand dtype; in-context weights and gradients stay float32.

  `teach_piece`: with the teach signal, P, the length of the pieces whose loss gradients
  `teach` takes (the smallest adaptive chunk size); None with the associative signal.
  """

  def __init__(self, dim: int, *, hidden: int, chunk_sizes: Sequence[int | None],
               inner_lr: float | Sequence[float] = 1e-2, max_grad_norm: float | None = 8.0,
               signal: str = "associative", rngs: nnx.Rngs, dtype=jnp.float32):
    for name, value in (("dim", dim), ("hidden", hidden)):
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"ContinuumMemory {name} must be a positive integer, got {value!r}")
    self.teach_piece = teach_piece_of(chunk_sizes, signal)
    lrs = (inner_lr,) * len(chunk_sizes) if np.isscalar(inner_lr) else tuple(inner_lr)
    if len(lrs) != len(chunk_sizes) or not all(
        isinstance(lr, (int, float, np.number)) and np.isfinite(lr) and lr >= 0 for lr in lrs):
      raise ValueError("ContinuumMemory inner_lr must be a finite float >= 0 or one per level "
                       f"({len(chunk_sizes)}), got {inner_lr!r}")
    check_clip_norm("ContinuumMemory ", max_grad_norm)
    self.max_grad_norm = max_grad_norm
    self.dim, self.hidden, self.dtype = dim, hidden, dtype
    self.chunk_sizes = tuple(int(c) if c else None for c in chunk_sizes)
    self.inner_lrs = tuple(float(lr) for lr in lrs)
    self.signal = signal
    self.levels = nnx.List([CMSLevel(dim, hidden, c is not None and signal == "associative",
                                     rngs=rngs) for c in self.chunk_sizes])

  def init_state(self, batch_size: int) -> CMSState:
    """Every adaptive level at its learned initial weights, no pending gradient, position 0."""
    def level_state(level, chunk):
      if chunk is None:
        return None
      tile = lambda w: jnp.broadcast_to(w[...], (batch_size,) + w.shape)
      return CMSLevelState(w_in=tile(level.w_in), w_out=tile(level.w_out),
                           grad_in=jnp.zeros((batch_size,) + level.w_in.shape, jnp.float32),
                           grad_out=jnp.zeros((batch_size,) + level.w_out.shape, jnp.float32),
                           position=jnp.zeros((batch_size,), jnp.int32))
    return CMSState(tuple(level_state(l, c) for l, c in zip(self.levels, self.chunk_sizes)))

  def __call__(self, x: jax.Array, state: CMSState | None = None,
               mask: jax.Array | None = None) -> tuple[jax.Array, CMSState]:
    """x [batch, seq, dim] -> (y [batch, seq, dim], the state after the call).

    `mask` [batch, seq] (nonzero = real token): masked tokens are skipped as if absent
    (they neither update a level nor advance its chunk clock) and get zero output. With the
    teach signal every level applies its weights in force and the state is returned as is.
    """
    chex.assert_rank(x, 3)
    batch, seq, _ = x.shape
    fresh = state is None
    state = self.init_state(batch) if fresh else state
    mask = jnp.ones((batch, seq), bool) if mask is None else mask
    chex.assert_shape(mask, (batch, seq))
    if self.signal == "teach":
      h = x
      for level, s in zip(self.levels, state.levels):
        w_in, w_out = (level.w_in[...], level.w_out[...]) if s is None else (s.w_in, s.w_out)
        h = h + _branch(w_in, w_out, level.norm.scale[...], h, self.dtype)[3]
      return jnp.where(mask[..., None], h, 0).astype(self.dtype), state
    levels = [dict(scale=l.norm.scale[...], w_in=l.w_in[...], w_out=l.w_out[...],
                   target=None if l.target is None else l.target[...]) for l in self.levels]

    def one_sequence(x, mask, level_states):
      comp = compaction(mask)
      h = compact(x, comp)
      new_states = []
      for level, chunk, lr, s in zip(levels, self.chunk_sizes, self.inner_lrs, level_states):
        if chunk is None:
          h = h + _branch(level["w_in"], level["w_out"], level["scale"], h, self.dtype)[3]
        else:
          h, s = _adaptive_level(level, lr, chunk, h, comp.count, s, self.dtype, fresh,
                                 self.max_grad_norm)
        new_states.append(s)
      return uncompact(h, comp), tuple(new_states)

    y, new_levels = jax.vmap(one_sequence)(x, mask, state.levels)
    return y.astype(self.dtype), CMSState(new_levels)

  def teach(self, state: CMSState, grads: CMSState, tokens: int) -> CMSState:
    """The state after a piece of `tokens` tokens read with the teach signal.

    `grads` holds grad_theta L_piece at the weights in force (its w_in and w_out, per
    sequence; other fields are ignored). Each adaptive level clips its gradient to a norm
    of max_grad_norm * dim * tokens, adds it to its pending sum and advances its clock; a
    level whose chunk ends with the piece sets theta <- theta - lr_l * sum and clears the sum.
    The update is a constant for the outer gradient (`jax.lax.stop_gradient`).
    """
    clip = self.max_grad_norm and self.max_grad_norm * self.dim * tokens
    levels = []
    for s, g, chunk, lr in zip(state.levels, grads.levels, self.chunk_sizes, self.inner_lrs):
      if s is None:
        levels.append(None)
        continue
      g_in, g_out = jax.lax.stop_gradient((g.w_in, g.w_out))
      scale = clip_scale(jnp.sum(g_in * g_in, (1, 2)) + jnp.sum(g_out * g_out, (1, 2)), clip)
      g_in = s.grad_in + scale[:, None, None] * g_in
      g_out = s.grad_out + scale[:, None, None] * g_out
      position = s.position + tokens
      complete = (position >= chunk)[:, None, None]
      levels.append(CMSLevelState(
          w_in=jnp.where(complete, s.w_in - lr * g_in, s.w_in),
          w_out=jnp.where(complete, s.w_out - lr * g_out, s.w_out),
          grad_in=jnp.where(complete, 0.0, g_in), grad_out=jnp.where(complete, 0.0, g_out),
          position=position % chunk))
    return CMSState(tuple(levels))

  def flops_per_token(self, seq_len: int) -> float:
    """Forward matmul FLOPs per token: every level's MLP (2 matmuls); with the associative
    signal, adaptive levels add the value projection and the inner gradient (3 matmuls the
    MLP's size; the teach signal's gradients are the model's backward pass, counted by
    `DecoderLM`). Weight updates at boundaries (elementwise, 1/C_l per token) are not counted."""
    del seq_len
    mlp = 2 * 2 * self.dim * self.hidden
    inner = 2 * self.dim * self.dim + 3 * 2 * self.dim * self.hidden
    adaptive = self.signal == "associative"
    return sum(mlp + (inner if c is not None and adaptive else 0) for c in self.chunk_sizes)


def check_finite(state: CMSState) -> None:
  """Raises FloatingPointError naming the first level whose in-context state (weights or
  pending gradient) holds a NaN or an infinity. Call it on a returned state outside jit,
  e.g. every few steps of a training loop (inside jit, use `jax.config.jax_debug_nans`)."""
  bad = first_nonfinite((f"CMS level {i}: non-finite values in its in-context {name}",
                         getattr(level, name)) for i, level in enumerate(state.levels)
                        if level is not None for name in ("w_in", "w_out", "grad_in", "grad_out"))
  if bad:
    raise FloatingPointError(bad[0])
