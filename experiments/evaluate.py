"""Evaluates a checkpoint of a pretraining run on the validation split.

  python -m experiments.evaluate --workdir=DIR [--step=N] [--mesh=data:2,tensor:4] [--context=T]

Reads the run's config from the checkpoint, restores the parameters onto the evaluation mesh
(any shape: the checkpoint need not come from the same mesh), and scores the first
`config.eval_batches` validation batches in order. Writes DIR/eval/step_<N>.json with
`loss` (mean next-token cross-entropy, nats), `perplexity`, `bits_per_byte`, `tokens`, and
`loss_by_piece`.

`--context=T` (a multiple of the training seq_len) scores documents of T tokens read in
pieces of seq_len: models with in-context memories (Titans, HOPE, CMS) carry their state
from piece to piece (`DecoderLM.stream`), so `loss_by_piece` shows learning at test time;
attention-only models see each piece alone. The default is one piece (T = seq_len).
"""
import itertools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags, logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments import cli, data, distributed, training
from experiments.checkpointing import Checkpoints

WORKDIR = flags.DEFINE_string("workdir", None, "The pretraining run's workdir.")
STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
CONTEXT = flags.DEFINE_integer("context", None, "Document length in tokens, a multiple of the "
                               "training seq_len (default: seq_len).")
MESH = flags.DEFINE_string("mesh", "data:-1", "Evaluation mesh as axis:size pairs, e.g. "
                           "data:2,tensor:4; unnamed axes are 1 and -1 means the rest.")


def parse_mesh(text: str) -> dict:
  sizes = {}
  for part in filter(None, text.split(",")):
    name, _, size = part.partition(":")
    try:
      sizes[name.strip()] = int(size)
    except ValueError:
      raise cli.UsageError(f"--mesh: {part!r} is not axis:size (e.g. data:2,tensor:4)") from None
  return sizes


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


def evaluate(workdir: str, step: int | None = None, mesh_sizes: dict | None = None,
             context: int | None = None) -> dict:
  workdir = str(Path(workdir).expanduser().absolute())  # orbax needs absolute paths
  checkpoints = Path(workdir) / "checkpoints"
  if not checkpoints.is_dir():
    raise cli.UsageError(f"--workdir {workdir!r} holds no checkpoints (no {checkpoints})")
  ckpt = Checkpoints(checkpoints, read_only=True)
  steps = ckpt.all_steps()
  if not steps:
    raise cli.UsageError(f"--workdir {workdir!r} holds no finished checkpoint")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise cli.UsageError(f"--step {step}: no such checkpoint in {str(checkpoints)!r}; "
                         f"saved steps are {sorted(steps)}")
  config = ml_collections.ConfigDict(ckpt.config(step))
  context = context or config.seq_len
  if context <= 0 or context % config.seq_len:
    raise cli.UsageError(f"--context ({context}) must be a positive multiple of the training "
                         f"seq_len ({config.seq_len})")
  run = training.prepare(config, mesh_sizes=mesh_sizes or {"data": -1})
  corpus = data.load_corpus(config.data.source, config.data.validation_percent)
  batches = data.lm_dataset(corpus.validation, seq_len=context,
                            batch_size=config.batch_size, seed=config.seed, shuffle=False,
                            repeat=False, process_index=jax.process_index(),
                            process_count=jax.process_count())
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        run.abstract_params, run.param_shardings)
  with jax.set_mesh(run.mesh):
    params = ckpt.restore_params(step, target)
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
                bits_per_byte=loss / math.log(2), tokens=tokens, context=context,
                loss_by_piece=(by_piece / (rows * config.seq_len)).tolist())
  if jax.process_index() == 0:
    out = Path(workdir) / "eval" / f"step_{step}.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    logging.info("step %d: loss %.4f, perplexity %.3f, %.4f bits/byte over %d tokens -> %s",
                 step, loss, result["perplexity"], result["bits_per_byte"], tokens, out)
  return result


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  if not WORKDIR.value:
    raise cli.UsageError("--workdir is required")
  distributed.initialize()
  evaluate(WORKDIR.value, STEP.value, parse_mesh(MESH.value), CONTEXT.value)


if __name__ == "__main__":
  cli.run(main)
