"""Scoring a language model on held-out text: a checkpoint's validation loss (the library
behind the `experiments.evaluate` command), and the loss with in-context state carried.

`evaluate` reads the run's config from the latest intact checkpoint (one whose files fail
their checksums is skipped with a warning), restores the parameters onto any
mesh, scores the first `config.eval_batches` validation batches in order and writes
WORKDIR/eval/step_<N>.json. With `context = T` (a multiple of the training seq_len) it
scores documents of T tokens read in pieces of seq_len, carrying every in-context memory's
state from piece to piece (`DecoderLM.stream`).
"""
import itertools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from runtime import text_data
from runtime import training
from runtime.checkpoints import Checkpoints
from runtime.errors import UsageError
from runtime.workdir import write_json


def piece_losses(run: training.Run, params, tokens: jax.Array, pieces: int) -> jax.Array:
  """Summed cross-entropy of each of `pieces` consecutive pieces of tokens [batch, T + 1],
  the model's in-context state carried from piece to piece (eq. of `DecoderLM.stream`)."""
  model = nnx.merge(run.graphdef, params)
  batch, length = tokens.shape
  size = (length - 1) // pieces
  starts = jnp.arange(pieces) * size
  windows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(tokens, s, size + 1, axis=1))(starts)

  def read_piece(state, window):
    logits, state = model.stream(window[:, :-1], state)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, window[:, 1:]).sum()
    return state, loss

  return jax.lax.scan(read_piece, model.init_state(batch), windows)[1]


def checkpoint_to_read(workdir: str, step: int | None) -> tuple[Checkpoints, int, ml_collections.ConfigDict]:
  """(the checkpoints, the step to read, its run's config) of a pretraining workdir: `step`,
  or the latest intact one (a corrupt newer one skipped with a warning). A workdir without
  checkpoints, a missing or corrupt `step`: UsageError. Reads only."""
  checkpoints = Path(workdir) / "checkpoints"
  if not checkpoints.is_dir():
    raise UsageError(f"--workdir {workdir!r} holds no checkpoints (no {checkpoints})")
  ckpt = Checkpoints(checkpoints, read_only=True)
  steps = ckpt.all_steps()
  if not steps:
    raise UsageError(f"--workdir {workdir!r} holds no finished checkpoint")
  if step is None:
    step, corrupt = ckpt.latest_intact()
    for skipped, problem in sorted(corrupt.items(), reverse=True):
      logging.warning("skipping checkpoint step %d: it is corrupt (%s)", skipped, problem)
    if step is None:
      raise UsageError(f"every checkpoint in {str(checkpoints)!r} is corrupt")
  elif step not in steps:
    raise UsageError(f"--step {step}: no such checkpoint in {str(checkpoints)!r}; "
                         f"saved steps are {sorted(steps)}")
  elif problem := ckpt.problem(step):
    raise UsageError(f"--step {step}: the checkpoint is corrupt ({problem})")
  return ckpt, step, ml_collections.ConfigDict(ckpt.config(step))


def restore_params(ckpt: Checkpoints, step: int, run: training.Run):
  """The parameters of checkpoint `step` in `run`'s shardings (call under jax.set_mesh)."""
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        run.abstract_params, run.param_shardings)
  return ckpt.restore_params(step, target)


def evaluate(workdir: str, step: int | None = None, mesh_sizes: dict | None = None,
             context: int | None = None) -> dict:
  workdir = str(Path(workdir).expanduser().absolute())  # orbax needs absolute paths
  ckpt, step, config = checkpoint_to_read(workdir, step)
  context = context or config.seq_len
  if context <= 0 or context % config.seq_len:
    raise UsageError(f"--context ({context}) must be a positive multiple of the training "
                         f"seq_len ({config.seq_len})")
  run = training.prepare(config, mesh_sizes=mesh_sizes or {"data": -1})
  corpus = text_data.load_corpus(config.data.source, config.data.validation_percent)
  batches = text_data.lm_dataset(corpus.validation, seq_len=context,
                            batch_size=config.batch_size, seed=config.seed, shuffle=False,
                            repeat=False, process_index=jax.process_index(),
                            process_count=jax.process_count())
  with jax.set_mesh(run.mesh):
    params = restore_params(ckpt, step, run)
    pieces = context // config.seq_len
    score = jax.jit(lambda p, tokens: piece_losses(run, p, tokens, pieces),
                    in_shardings=(run.param_shardings, run.batch_sharding),
                    out_shardings=NamedSharding(run.mesh, P()))
    by_piece, rows = np.zeros(pieces), 0
    for local in itertools.islice(batches, config.eval_batches):
      batch = training.global_batch(run, local)
      by_piece += np.asarray(score(params, batch), np.float64)
      rows += batch.shape[0]
  tokens = rows * context
  loss = float(by_piece.sum() / tokens)
  result = dict(step=step, loss=loss, perplexity=math.exp(loss),
                bits_per_byte=loss / math.log(2) / corpus.bytes_per_token,
                tokenizer=corpus.tokenizer.name, bytes_per_token=corpus.bytes_per_token,
                tokens=tokens, context=context,
                loss_by_piece=(by_piece / (rows * config.seq_len)).tolist())
  if jax.process_index() == 0:
    out = Path(workdir) / "eval" / f"step_{step}.json"
    out.parent.mkdir(exist_ok=True)
    write_json(out, result)
    logging.info("step %d: loss %.4f, perplexity %.3f, %.4f bits/byte over %d tokens -> %s",
                 step, loss, result["perplexity"], result["bits_per_byte"], tokens, out)
  return result
