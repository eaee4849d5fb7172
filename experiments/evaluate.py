"""Evaluates a checkpoint of a pretraining run on the validation split.

  python -m experiments.evaluate --workdir=DIR [--step=N] [--mesh=data:2,tensor:4]

Reads the run's config from the checkpoint, restores the parameters onto the evaluation mesh
(any shape: the checkpoint need not come from the same mesh), and scores the first
`config.eval_batches` validation batches in order. Writes DIR/eval/step_<N>.json with
`loss` (mean next-token cross-entropy, nats), `perplexity`, `bits_per_byte` and `tokens`.
"""
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments import cli, data, distributed, training
from experiments.checkpointing import Checkpoints

WORKDIR = flags.DEFINE_string("workdir", None, "The pretraining run's workdir.")
STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
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


def evaluate(workdir: str, step: int | None = None, mesh_sizes: dict | None = None) -> dict:
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
  run = training.prepare(config, mesh_sizes=mesh_sizes or {"data": -1})
  corpus = data.load_corpus(config.data.source, config.data.validation_percent)
  batches = data.lm_dataset(corpus.validation, seq_len=config.seq_len,
                            batch_size=config.batch_size, seed=config.seed, shuffle=False,
                            repeat=False, process_index=jax.process_index(),
                            process_count=jax.process_count())
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        run.abstract_params, run.param_shardings)
  with jax.set_mesh(run.mesh):
    params = ckpt.restore_params(step, target)
    replicated = NamedSharding(run.mesh, P())
    summed_loss = jax.jit(
        lambda p, tokens: training.loss_fn(run, p, tokens) * tokens[:, 1:].size,
        in_shardings=(run.param_shardings, run.batch_sharding), out_shardings=replicated)
    total, tokens = 0.0, 0
    for i, local in zip(range(config.eval_batches), batches):
      batch = training.global_batch(run, local)
      total += float(summed_loss(params, batch))
      tokens += batch.shape[0] * (batch.shape[1] - 1)
  loss = total / tokens
  result = dict(step=step, loss=loss, perplexity=math.exp(loss),
                bits_per_byte=loss / math.log(2), tokens=tokens)
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
  evaluate(WORKDIR.value, STEP.value, parse_mesh(MESH.value))


if __name__ == "__main__":
  cli.run(main)
