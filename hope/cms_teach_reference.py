"""A slow, obviously correct teach signal for the CMS (`hope.cms`): a Python loop over pieces.

The model reads the tokens one piece of P = `model.teach_piece` tokens at a time: the
embedding, each block's own call (mixers carrying their state from piece to piece, CMS levels
applying their weights in force), the final norm and the logits. For each piece, jax.grad of
the piece's summed next-token cross-entropy (positions 0..P-2 predicting tokens 1..P-1 of the
piece) with respect to every adaptive CMS level's weights in force gives that level's
gradient; it is clipped per sequence to a norm of max_grad_norm * dim * P and added to the
level's running sum, and once the level has read a multiple of C_l tokens, lr_l times the sum
(a constant for the outer gradient: `jax.lax.stop_gradient`) is subtracted from the weights
and the sum cleared.

The weights in force and the sums are held here, in Python lists, and written into the CMS
states before each piece, so neither `DecoderLM`'s scan over pieces nor `ContinuumMemory.teach`
and its clocks play a part. Every product is a plain `a @ b` (`hope.matmul.plain`), so the
fast path's custom products, and their second derivatives, are checked against jax's own.
Only for models built with `cms_signal='teach'` (`hope.hope_lm`), from the learned initial
state. For tests only.
"""
import jax
import jax.numpy as jnp

from hope import matmul
from hope.lm import DecoderLM
from hope.neural_memory import clip_scale


def _with_weights(state: tuple, weights: list) -> tuple:
  """The model state with each adaptive CMS level's weights in force set to `weights[b][l]`."""
  return tuple((mixer, cms.replace(levels=tuple(
      level if w is None else level.replace(w_in=w[0], w_out=w[1])
      for level, w in zip(cms.levels, block_weights))))
      for (mixer, cms), block_weights in zip(state, weights))


def _read(model: DecoderLM, tokens: jax.Array, state: tuple) -> tuple[jax.Array, tuple]:
  """Logits [batch, P, vocab] of one piece and the blocks' states after it."""
  x = model.embed(tokens)
  new_state = []
  for block, block_state in zip(model.blocks, state):
    x, block_state = block(x, None, block_state)
    new_state.append(block_state)
  return model.unembed(model.final_norm(x)).astype(jnp.float32), tuple(new_state)


def reference_teach(model: DecoderLM, tokens: jax.Array) -> jax.Array:
  """tokens [batch, seq] (seq a multiple of P) -> logits [batch, seq, vocab]."""
  with matmul.plain():
    return _reference_teach(model, tokens)


def _reference_teach(model: DecoderLM, tokens: jax.Array) -> jax.Array:
  batch, seq = tokens.shape
  piece = model.teach_piece
  state = model.init_state(batch)
  weights = [[None if level is None else (level.w_in, level.w_out) for level in cms.levels]
             for _, cms in state]
  sums = jax.tree.map(jnp.zeros_like, weights)
  outputs = []
  for start in range(0, seq, piece):
    x = tokens[:, start:start + piece]

    def piece_loss(weights):
      logits, new_state = _read(model, x, _with_weights(state, weights))
      log_p = jax.nn.log_softmax(logits[:, :-1])
      return -jnp.sum(jnp.take_along_axis(log_p, x[:, 1:, None], -1)), (logits, new_state)

    (_, (logits, state)), grads = jax.value_and_grad(piece_loss, has_aux=True)(weights)
    outputs.append(logits)
    for b, block in enumerate(model.blocks):
      cms = block.mlp
      for l, (chunk, lr) in enumerate(zip(cms.chunk_sizes, cms.inner_lrs)):
        if chunk is None:
          continue
        clip = cms.max_grad_norm and cms.max_grad_norm * cms.dim * piece
        factor = clip_scale(sum(jnp.sum(g * g, axis=(1, 2)) for g in grads[b][l]), clip)
        sums[b][l] = tuple(s + factor[:, None, None] * g for s, g in zip(sums[b][l], grads[b][l]))
        if (start + piece) % chunk == 0:
          weights[b][l] = tuple(w - lr * jax.lax.stop_gradient(s)
                                for w, s in zip(weights[b][l], sums[b][l]))
          sums[b][l] = tuple(jnp.zeros_like(s) for s in sums[b][l])
  return jnp.concatenate(outputs, axis=1)
