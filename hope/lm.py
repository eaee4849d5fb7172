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

Incremental decoding (`DecoderLM.init_decode_state`, `DecoderLM.decode`) carries, besides
the in-context states, what attention needs from earlier tokens: a part with
`init_cache(batch_size, max_len)` and `decode(x, cache) -> (y, cache)` (softmax attention's
key-value cache) decodes through them, a stateful part through its state, a per-token part
(an MLP, a product-key memory) as it is. The logits of a document decoded in calls of any
lengths equal those of one `__call__` over it.

Teach signal. A part with a `teach_piece` P (a Continuum Memory System driven by the
next-token loss, `hope.cms`) learns from the model's own loss: both `__call__` and `stream`
then read the tokens in pieces of P (a `lax.scan` over pieces carrying every block's state)
and after each piece take

    g = grad_theta L_piece,   L_piece = - sum_{i=0}^{P-2} log p(x_{i+1} | x_{<=i})

over the piece's tokens x_0..x_{P-1} (earlier pieces reach them through the state), theta
being the taught parts' weights in force (part of their state), and hand g to each taught
part's `teach(state, g, P)`, which changes the weights that later pieces see. The weights a
token sees thus depend on earlier pieces only, and the update is a constant for the outer
gradient (the outer optimizer trains the initial weights through the weights in force).
This needs every sequence mixer to carry its state across pieces exactly (a stateless mixer,
such as softmax attention over one call, is refused), every call's length to be a multiple
of P (a partial piece would have to be finished in a later call; refused with a ValueError)
and no padding mask (refused likewise).
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


def init_decode_state(part, batch_size: int, max_len: int):
  """A part's decoding state: its cache, its in-context state, or None (per-token part)."""
  if hasattr(part, "init_cache"):
    return part.init_cache(batch_size, max_len)
  return part.init_state(batch_size) if is_stateful(part) else None


def decode(part, x: jax.Array, state) -> tuple[jax.Array, Any]:
  """`apply` for decoding: through the part's cache where it has one."""
  if hasattr(part, "init_cache"):
    return part.decode(x, state)
  return apply(part, x, state)


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
    keys = jax.random.split(rng) if rng is not None else (None, None)
    return self._residuals(x, state if state is not None else (None, None), keys,
                           lambda part, y, s: apply(part, y, s, mask))

  def init_decode_state(self, batch_size: int, max_len: int) -> tuple:
    return tuple(init_decode_state(m, batch_size, max_len) for m in (self.mixer, self.mlp))

  def decode(self, x: jax.Array, state: tuple) -> tuple[jax.Array, tuple]:
    """`__call__` without dropout, the parts decoding through their caches."""
    return self._residuals(x, state, (None, None), decode)

  def _residuals(self, x, state, keys, run_part):
    """The two residual updates, each part run by run_part(part, input, its state)."""
    mixer_state, mlp_state = state
    y, mixer_state = run_part(self.mixer, self.mixer_norm(x), mixer_state)
    x = x + self._dropout(y, keys[0])
    if self.mlp_norm is None:
      x, mlp_state = run_part(self.mlp, x, mlp_state)
      return x, (mixer_state, mlp_state)
    y, mlp_state = run_part(self.mlp, self.mlp_norm(x), mlp_state)
    return x + self._dropout(y, keys[1]), (mixer_state, mlp_state)

  def _dropout(self, y: jax.Array, key: jax.Array | None) -> jax.Array:
    if key is None or not self.dropout_rate:
      return y
    keep = jax.random.bernoulli(key, 1.0 - self.dropout_rate, y.shape)
    return jnp.where(keep, y / (1.0 - self.dropout_rate), 0).astype(y.dtype)

  def flops_per_token(self, seq_len: int) -> float:
    return self.mixer.flops_per_token(seq_len) + self.mlp.flops_per_token(seq_len)


def teach_piece(module) -> int | None:
  """The piece length P of a part that learns from the teach signal, None for other parts."""
  return getattr(module, "teach_piece", None)


class DecoderLM(nnx.Module):
  """Maps tokens [batch, seq] (int) to next-token logits [batch, seq, vocab] (float32).

  `teach_piece`: P when some part learns from the teach signal (the smallest of the parts'
  pieces; see the module docstring), else None.
  """

  def __init__(self, vocab_size: int, dim: int, blocks: Sequence[Block], *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    pieces = [teach_piece(part) for block in blocks for part in (block.mixer, block.mlp)
              if teach_piece(part)]
    self.teach_piece = min(pieces) if pieces else None
    if any(p % self.teach_piece for p in pieces):
      raise ValueError(f"the taught parts' pieces {pieces} must be multiples of the smallest")
    stateless = [i for i, block in enumerate(blocks) if not is_stateful(block.mixer)]
    if pieces and stateless:
      raise ValueError(
          f"the teach signal reads the tokens in pieces of {self.teach_piece} and carries every "
          f"block's state between them, but the sequence mixers of blocks {stateless} "
          f"({type(blocks[stateless[0]].mixer).__name__}) are stateless: they would not see "
          "earlier pieces")
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

  def init_decode_state(self, batch_size: int, max_len: int) -> tuple:
    """The decoding state of every block for a document of at most `max_len` tokens."""
    if self.teach_piece:
      raise ValueError(f"a model taught by the next-token loss reads pieces of "
                       f"{self.teach_piece} tokens; it cannot decode one token at a time")
    return tuple(block.init_decode_state(batch_size, max_len) for block in self.blocks)

  def decode(self, tokens: jax.Array, state: tuple) -> tuple[jax.Array, tuple]:
    """Logits [batch, t, vocab] for the next t tokens [batch, t] of the document in `state`
    (`init_decode_state`), and the state with them read."""
    chex.assert_rank(tokens, 2)
    return self._through_blocks(tokens, state, lambda block, x, s, i: block.decode(x, s))

  def _run(self, tokens, rng, state, mask):
    chex.assert_rank(tokens, 2)
    if self.teach_piece:
      return self._run_taught(tokens, rng, state, mask)
    return self._forward(tokens, rng, state, mask)

  def _run_taught(self, tokens, rng, state, mask):
    """The teach-signal forward: a scan over pieces of P tokens (module docstring)."""
    batch, seq = tokens.shape
    piece = self.teach_piece
    if mask is not None:
      raise ValueError("a model taught by the next-token loss reads whole pieces of "
                       f"{piece} tokens; it takes no padding mask")
    if seq % piece:
      raise ValueError(f"a model taught by the next-token loss reads pieces of {piece} tokens: "
                       f"the sequence length ({seq}) must be a multiple of {piece}")
    taught = [(b, p) for b, block in enumerate(self.blocks)
              for p, part in enumerate((block.mixer, block.mlp)) if teach_piece(part)]
    pieces = tokens.reshape(batch, seq // piece, piece).swapaxes(0, 1)
    keys = None if rng is None else jax.random.split(rng, seq // piece)

    def read_piece(states, xs):
      tokens, key = xs

      def piece_loss(taught_states):
        logits, new_states = self._forward(tokens, key, _with_parts(states, taught, taught_states),
                                           None)
        log_p = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.sum(jnp.take_along_axis(log_p, tokens[:, 1:, None], -1)), (logits, new_states)

      # allow_int: the taught states hold int clocks too (their float0 gradients go unused).
      (_, (logits, states)), grads = jax.value_and_grad(piece_loss, has_aux=True, allow_int=True)(
          [states[b][p] for b, p in taught])
      taught_states = [(self.blocks[b].mixer, self.blocks[b].mlp)[p].teach(states[b][p], g, piece)
                       for (b, p), g in zip(taught, grads)]
      return _with_parts(states, taught, taught_states), logits

    # Rematerialised: the outer backward recomputes each piece's forward (its inner backward,
    # a constant, is not needed again) instead of storing every piece's activations.
    state = self.init_state(batch) if state is None else state
    state, logits = jax.lax.scan(jax.checkpoint(read_piece), state, (pieces, keys))
    return logits.swapaxes(0, 1).reshape(batch, seq, -1), state

  def _forward(self, tokens, rng, state, mask):
    """Embedding, the blocks (each part's own call), the final norm and the logits."""
    keys = jax.random.split(rng, len(self.blocks)) if rng is not None else [None] * len(self.blocks)
    states = state if state is not None else [None] * len(self.blocks)
    return self._through_blocks(tokens, states,
                                lambda block, x, s, i: block(x, keys[i], s, mask))

  def _through_blocks(self, tokens, states, run_block):
    """Embedding, run_block(block, x, its state, index) for each block, the final norm and
    the logits; returns (logits, the blocks' new states)."""
    x = self.embed(tokens)
    new_states = []
    for i, (block, block_state) in enumerate(zip(self.blocks, states)):
      x, block_state = run_block(block, x, block_state, i)
      new_states.append(block_state)
    return self.unembed(self.final_norm(x)).astype(jnp.float32), tuple(new_states)

  def flops_per_token(self, seq_len: int) -> float:
    """Forward-pass model FLOPs per token (matmuls and attention; x3 for a training step).
    With the teach signal the forward also runs a backward pass per piece for the taught
    weights' gradient, counted as one forward more."""
    dim, vocab = self.unembed.kernel.shape
    forward = sum(b.flops_per_token(seq_len) for b in self.blocks) + 2 * dim * vocab
    return 2 * forward if self.teach_piece else forward


def _with_parts(states: tuple, where: list, parts: list) -> tuple:
  """`states` (one (mixer, mlp) pair per block) with the part states at `where` [(b, p)] set."""
  states = [list(pair) for pair in states]
  for (b, p), part in zip(where, parts):
    states[b][p] = part
  return tuple(tuple(pair) for pair in states)
