"""Titans (Behrouz et al. 2025, sec. 4): the neural memory as a sequence model, with attention.

- LMM: the memory alone as the block's sequence mixer.
- MAG (memory as a gate, Fig. 4): sliding-window attention over [persistent | x] and the
  memory over x run in parallel; o = W_o(norm(y_attn) * sigmoid(norm(y_mem))).
- MAL (memory as a layer, Fig. 5): the memory, then sliding-window attention over
  [persistent | M(x)].
- MAC (memory as context, Fig. 2): the sequence is cut into segments S of `segment_len`
  tokens. Per segment: retrieve h = M*_{s-1}(q(S)) without updating; attend over
  [persistent | h | S] (causally: query t sees the persistent tokens, h_j and S_j for j <= t);
  write the attention output y into the memory; gate o = y * sigmoid(M_s(y)), read token by
  token as the memory learns, so every output depends only on earlier tokens.

Persistent memory (sec. 3.3) is a learned prefix of `persistent_tokens` vectors that every
query can attend to. The memory branch does not read it: the memory's learned initial
weights already play that role, and leaving it out keeps streaming (carrying the memory
state across pieces of a document) identical to one call over the whole document.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from hope.attention import CausalSelfAttention
from hope.layers import Dense, RMSNorm, param
from hope.lm import Block, DecoderLM, check_shape
from hope.mlp import SwiGLU
from hope.neural_memory import DecodeState, MemoryState, NeuralMemory

VARIANTS = ("lmm", "mac", "mag", "mal")


@struct.dataclass
class MacDecodeState:
  """Titans MAC while decoding: the memory's decoding state, its state at the current
  segment's start and the retrieval's query-convolution cache, the segment's retrieved h
  and inputs S so far [batch, segment_len, dim], and the place in the segment (`clock`)."""
  memory: DecodeState
  segment_start: MemoryState
  query_cache: jax.Array
  retrieved: jax.Array
  segment: jax.Array
  clock: jax.Array


class PersistentMemory(nnx.Module):
  """N_p learned tokens, input-independent, prepended as keys and values for attention."""

  def __init__(self, num_tokens: int, dim: int, *, rngs: nnx.Rngs):
    self.tokens = param(rngs, nnx.initializers.normal(0.02), (num_tokens, dim), (None, "embed"))

  def prepend(self, x: jax.Array) -> jax.Array:
    prefix = jnp.broadcast_to(self.tokens[...].astype(x.dtype), (x.shape[0],) + self.tokens.shape)
    return jnp.concatenate([prefix, x], axis=1)


def prefix_window_mask(num_prefix: int, seq_len: int, window: int) -> np.ndarray:
  """[seq, prefix + seq]: every query sees the prefix, and tokens t - window < j <= t."""
  t = np.arange(seq_len)[:, None]
  j = np.arange(seq_len)[None, :]
  local = (j <= t) & ((t - j < window) if window else True)
  return np.concatenate([np.ones((seq_len, num_prefix), bool), local], axis=1)


def mac_mask(num_prefix: int, segment_len: int) -> np.ndarray:
  """[segment, prefix + 2 segment]: persistent tokens, then retrieved h_j, then S_j, j <= t."""
  causal = np.tril(np.ones((segment_len, segment_len), bool))
  return np.concatenate([np.ones((segment_len, num_prefix), bool), causal, causal], axis=1)


class Gate(nnx.Module):
  """o = W_o(norm_a(a) * sigmoid(norm_b(b))): the normalised non-linear gate of MAG/MAC."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm_a = RMSNorm(dim, rngs=rngs)
    self.norm_b = RMSNorm(dim, rngs=rngs)
    self.out = Dense((dim,), (dim,), ("embed",), ("embed",), rngs=rngs, dtype=dtype)

  def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
    return self.out(self.norm_a(a) * jax.nn.sigmoid(self.norm_b(b)))

  def flops_per_token(self) -> float:
    return 2 * self.out.kernel.shape[0] * self.out.kernel.shape[1]


class TitansMixer(nnx.Module):
  """One Titans sequence mixer (`variant` in lmm, mac, mag, mal); stateful: the memory."""

  def __init__(self, variant: str, dim: int, *, num_heads: int, head_dim: int, window: int,
               segment_len: int, persistent_tokens: int, memory: dict, rngs: nnx.Rngs,
               dtype=jnp.float32):
    if variant not in VARIANTS:
      raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    self.variant = variant
    self.memory = NeuralMemory(dim, num_heads=num_heads, head_dim=head_dim, rngs=rngs,
                               dtype=dtype, **memory)
    if variant == "lmm":
      return
    if persistent_tokens < 0:
      raise ValueError(f"persistent_tokens must be >= 0, got {persistent_tokens}")
    self.attention = CausalSelfAttention(dim, num_heads, head_dim, rngs=rngs, window=window,
                                         dtype=dtype)
    self.persistent = PersistentMemory(persistent_tokens, dim, rngs=rngs)
    self.window = window
    self.segment_len = segment_len
    if variant == "mac":
      chunk = self.memory.chunk_size
      if segment_len <= 0 or segment_len % chunk:
        raise ValueError(f"segment_len ({segment_len}) must be a positive multiple of the "
                         f"memory chunk_size ({chunk})")
    if variant in ("mac", "mag"):
      self.gate = Gate(dim, rngs=rngs, dtype=dtype)

  def init_state(self, batch_size: int):
    return self.memory.init_state(batch_size)

  def init_cache(self, batch_size: int, max_len: int):
    """The decoding state: the memory's state, with MAG and MAL also the attention's cache."""
    state = self.memory.init_cache(batch_size, max_len)
    if self.variant == "lmm":
      return state
    if self.variant == "mac":
      inputs = jnp.zeros((batch_size, self.segment_len, self.memory.dim), jnp.float32)
      return MacDecodeState(memory=state, segment_start=state.memory,
                            query_cache=state.memory.conv[0], retrieved=inputs, segment=inputs,
                            clock=jnp.zeros((), jnp.int32))
    return state, self.attention.init_cache(batch_size, max_len)

  def decode(self, x: jax.Array, cache):
    """`__call__` on the next tokens of the document in `cache` (`init_cache`)."""
    if self.variant == "lmm":
      return self.memory.decode(x, cache)
    if self.variant == "mac":
      cache, out = jax.lax.scan(self._mac_token, cache, jnp.swapaxes(x, 0, 1)[:, :, None])
      return jnp.swapaxes(out[:, :, 0], 0, 1), cache
    state, kv = cache
    if self.variant == "mag":
      y_attn, kv = self.attention.decode(x, kv, prefix=self.persistent.prepend(x[:, :0]))
      y_mem, state = self.memory.decode(x, state)
      return self.gate(y_attn, y_mem), (state, kv)
    y_mem, state = self.memory.decode(x, state)  # mal
    y, kv = self.attention.decode(y_mem, kv, prefix=self.persistent.prepend(y_mem[:, :0]))
    return y, (state, kv)

  def _mac_token(self, cache, x):
    """MAC on one token x [batch, 1, dim] at place p = cache.clock of its segment: h_p from
    the memory at the segment's start, attention over [persistent | h_<=p | S_<=p], the
    write of y into the memory and the gate; at the segment's end the memory's state
    becomes the next segment's start."""
    p, size = cache.clock, self.segment_len
    h, query_cache = self.memory.read(x, cache.segment_start.weights, cache.query_cache)
    retrieved = jax.lax.dynamic_update_slice_in_dim(cache.retrieved, h.astype(jnp.float32), p, 1)
    segment = jax.lax.dynamic_update_slice_in_dim(cache.segment, x.astype(jnp.float32), p, 1)
    num_prefix = self.persistent.tokens.shape[0]
    local = num_prefix + jnp.arange(size)
    seen = jnp.arange(size) <= p
    mask = jnp.concatenate([jnp.ones(num_prefix, bool), seen, seen])[None]
    context = jnp.concatenate([self.persistent.prepend(retrieved.astype(x.dtype)),
                               segment.astype(x.dtype)], axis=1)
    y = self.attention.attend(x, context, num_prefix + p[None],
                              jnp.concatenate([jnp.arange(num_prefix), local, local]), mask)
    written, memory = self.memory.decode(y, cache.memory)
    ends = p == size - 1
    cache = MacDecodeState(
        memory=memory, segment_start=optax.tree_utils.tree_where(ends, memory.memory,
                                                                 cache.segment_start),
        query_cache=jnp.where(ends, memory.memory.conv[0], query_cache), retrieved=retrieved,
        segment=segment, clock=(p + 1) % size)
    return cache, self.gate(y, written)

  def __call__(self, x: jax.Array, state=None, mask=None):
    if self.variant == "lmm":
      return self.memory(x, state, mask)
    if self.variant == "mac":
      return self._memory_as_context(x, state, mask)
    positions = jnp.arange(x.shape[1])
    num_prefix = self.persistent.tokens.shape[0]
    kv_positions = jnp.concatenate([jnp.arange(num_prefix), num_prefix + positions])
    attn_mask = prefix_window_mask(num_prefix, x.shape[1], self.window)
    if self.variant == "mag":
      y_attn = self.attention.attend(x, self.persistent.prepend(x), num_prefix + positions,
                                     kv_positions, attn_mask)
      y_mem, state = self.memory(x, state, mask)
      return self.gate(y_attn, y_mem), state
    y_mem, state = self.memory(x, state, mask)  # mal
    return self.attention.attend(y_mem, self.persistent.prepend(y_mem), num_prefix + positions,
                                 kv_positions, attn_mask), state

  def _memory_as_context(self, x, state, mask):
    batch, seq, dim = x.shape
    size = self.segment_len
    padded = -seq % size
    if mask is None:
      mask = jnp.ones((batch, seq), bool)
    x = jnp.pad(x, ((0, 0), (0, padded), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, padded)))
    segments = x.reshape(batch, -1, size, dim).swapaxes(0, 1)
    masks = mask.reshape(batch, -1, size).swapaxes(0, 1)
    num_prefix = self.persistent.tokens.shape[0]
    local = num_prefix + jnp.arange(size)
    kv_positions = jnp.concatenate([jnp.arange(num_prefix), local, local])
    attn_mask = mac_mask(num_prefix, size)

    def segment_step(state, inputs):
      segment, segment_mask = inputs
      retrieved = self.memory.retrieve(segment, state)
      context = jnp.concatenate([self.persistent.prepend(retrieved), segment], axis=1)
      y = self.attention.attend(segment, context, local, kv_positions, attn_mask)
      written, state = self.memory(y, state, segment_mask)
      return state, self.gate(y, written)

    if state is None:
      state = self.memory.init_state(batch)
    # Rematerialised: the backward pass keeps one memory state per segment, not every
    # intermediate of the attention and the memory (4.5x less memory at titans_mac:small
    # and 8-15% faster on CPU, where filling those buffers cost more than recomputing).
    state, out = jax.lax.scan(jax.checkpoint(segment_step, prevent_cse=False), state,
                              (segments, masks))
    return out.swapaxes(0, 1).reshape(batch, -1, dim)[:, :seq], state

  def flops_per_token(self, seq_len: int) -> float:
    flops = self.memory.flops_per_token(seq_len)
    if self.variant == "lmm":
      return flops
    heads, head_dim = self.attention.query.kernel.shape[1:]
    num_prefix = self.persistent.tokens.shape[0]
    projections = 2 * 4 * self.attention.query.kernel.shape[0] * heads * head_dim
    if self.variant == "mac":
      keys = num_prefix + (self.segment_len + 1)  # prefix + h_<=t + S_<=t, on average
      flops += self.memory.flops_per_token(seq_len)  # retrieval: one more read-out
    else:
      window = self.window or seq_len
      keys = num_prefix + min(window, (seq_len + 1) / 2)
    flops += projections + 2 * 2 * keys * heads * head_dim
    if self.variant in ("mac", "mag"):
      flops += self.gate.flops_per_token()
    return flops


def titans(*, variant: str, vocab_size: int, dim: int, num_layers: int, num_heads: int,
           mlp_dim: int, rngs: nnx.Rngs, head_dim: int = 0, window: int = 64,
           segment_len: int = 64, persistent_tokens: int = 4, memory_depth: int = 2,
           memory_expansion: int = 2, chunk_size: int = 16, momentum: bool = True,
           decay: bool = True, max_lr: float = 0.01, max_grad_norm: float | None = 1.0,
           dropout_rate: float = 0.0, dtype: str = "float32", kernel: str = "xla") -> DecoderLM:
  """A Titans LM: every block's mixer is a Titans `variant`, its MLP a SwiGLU; `kernel="pallas"`
  runs the memories' chunks as Pallas kernels (`hope.fused_kernel`)."""
  head_dim = check_shape(vocab_size=vocab_size, dim=dim, num_layers=num_layers,
                         num_heads=num_heads, mlp_dim=mlp_dim, head_dim=head_dim)
  compute_dtype = jnp.dtype(dtype)
  memory = dict(depth=memory_depth, expansion=memory_expansion, chunk_size=chunk_size,
                momentum=momentum, decay=decay, max_lr=max_lr, max_grad_norm=max_grad_norm,
                kernel=kernel)
  blocks = [
      Block(dim,
            TitansMixer(variant, dim, num_heads=num_heads, head_dim=head_dim, window=window,
                        segment_len=segment_len, persistent_tokens=persistent_tokens,
                        memory=memory, rngs=rngs, dtype=compute_dtype),
            SwiGLU(dim, mlp_dim, rngs=rngs, dtype=compute_dtype),
            rngs=rngs, dropout_rate=dropout_rate)
      for _ in range(num_layers)
  ]
  return DecoderLM(vocab_size, dim, blocks, rngs=rngs, dtype=compute_dtype)
