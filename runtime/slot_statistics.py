"""Background slot statistics of a memory-layer checkpoint, for Sparse Memory Finetuning (the
library behind `experiments.background_stats`, which is the command that makes them).

`compute` runs the frozen model of DIR's latest checkpoint on B batches of its pretraining
distribution (of `config.background_batch_size` sequences, default the training batch size)
and saves df(i) = number of batches that read slot i (Lin et al. 2025, sec. 4;
`memory_layers.tfidf`) beside the checkpoints, as the orbax item DIR/background_stats/
(arrays `df` [N] and scalars `num_batches`, `step`). Finetuning reads it back with `load`.
"""
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from runtime.errors import UsageError
from runtime import evaluation
from runtime import text_data
from runtime import facts
from runtime import training
from runtime.checkpoints import Checkpoints
from memory_layers import sparse_finetuning, tfidf

COMMAND = "python -m experiments.background_stats --workdir={workdir}"
ITEM = "background_stats"


def pretraining_batches(config: ml_collections.ConfigDict, seed: int, batch_size: int):
  """Batches [batch_size, seq_len + 1] of the run's pretraining distribution, drawn from
  `seed`: the fact/text mixture for a fact-injection run, else the corpus' training split."""
  corpus = text_data.load_corpus(config.data.source, config.data.validation_percent)
  if "facts" in config:
    world = facts.make_world(config.facts.seed, config.facts.num_known, config.facts.num_new)
    return facts.mixture_dataset(world, corpus.train, seq_len=config.seq_len,
                                 batch_size=batch_size,
                                 text_fraction=config.facts.text_fraction, seed=seed)
  return text_data.lm_dataset(corpus.train, seq_len=config.seq_len, batch_size=batch_size,
                         seed=seed, shuffle=True, repeat=True)


def memory_slots(run: training.Run) -> int:
  """N of the model's memory table; UsageError when the model has no memory layer."""
  try:
    layers = sparse_finetuning.memory_layers_of(nnx.merge(run.graphdef, run.abstract_params))
  except ValueError as e:
    raise UsageError(f"config.model: {e}") from e
  return layers[0].num_slots


def document_frequency(run: training.Run, params, batches, num_batches: int) -> np.ndarray:
  """df(i) = sum_b 1[c_b(i) > 0] over the first num_batches batches (int32 [N])."""
  reads = sparse_finetuning.reading_apply(run.graphdef, memory_slots(run))
  presence = jax.jit(lambda p, tokens: tfidf.batch_presence(
      reads(p, tokens, jnp.ones(tokens.shape, jnp.int32))[1]))
  df = 0
  for batch in itertools.islice(batches, num_batches):
    df = df + presence(params, jnp.asarray(batch[:, :-1]))
  return np.asarray(df, np.int32)


def save(workdir: Path, df: np.ndarray, num_batches: int, step: int) -> None:
  """Writes the orbax item workdir/background_stats (atomically; replaces an older one)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(Path(workdir).absolute() / ITEM,
                    dict(df=df, num_batches=np.int32(num_batches), step=np.int32(step)),
                    force=True)
  checkpointer.wait_until_finished()


def load(workdir: Path, step: int, num_slots: int) -> tuple[np.ndarray, int]:
  """(df, |B|) saved for the checkpoint at `step`; UsageError naming the command otherwise."""
  path = Path(workdir).absolute() / ITEM
  make = COMMAND.format(workdir=workdir)
  if not path.is_dir():
    raise UsageError(f"no background statistics in {str(path)!r}; sparse memory "
                         f"finetuning needs them: run `{make}`")
  stats = ocp.StandardCheckpointer().restore(path)
  if int(stats["step"]) != step or stats["df"].shape != (num_slots,):
    raise UsageError(f"{str(path)!r} holds statistics of step {int(stats['step'])} with "
                         f"{stats['df'].shape[0]} slots, not of the checkpoint at step {step} "
                         f"with {num_slots}: rerun `{make}`")
  return np.asarray(stats["df"]), int(stats["num_batches"])


def compute(workdir: str, num_batches: int | None = None) -> dict:
  """Loads DIR's latest checkpoint, counts df over num_batches batches, saves and returns it."""
  workdir = Path(workdir).expanduser().absolute()
  ckpt_dir = workdir / "checkpoints"
  ckpt = Checkpoints(ckpt_dir, read_only=True) if ckpt_dir.is_dir() else None
  step = ckpt.latest_step() if ckpt else None
  if step is None:
    raise UsageError(f"--workdir {str(workdir)!r} holds no checkpoint (no {ckpt_dir})")
  config = ml_collections.ConfigDict(ckpt.config(step))
  num_batches = num_batches or config.get("background_batches", 100)
  batch_size = config.get("background_batch_size", config.batch_size)
  if num_batches < 1:
    raise UsageError(f"--batches must be a positive integer, got {num_batches}")
  run = training.prepare(config, mesh_sizes={"data": -1})
  memory_slots(run)
  with jax.set_mesh(run.mesh):  # host arrays: the finetuning steps run on one device
    params = jax.device_get(evaluation.restore_params(ckpt, step, run))
  batches = pretraining_batches(config, config.seed + 1, batch_size)
  df = document_frequency(run, params, iter(batches), num_batches)
  save(workdir, df, num_batches, step)
  logging.info("df over %d batches of step %d: %d of %d slots read at least once -> %s",
               num_batches, step, int((df > 0).sum()), df.shape[0], workdir / ITEM)
  return dict(df=df, num_batches=num_batches, step=step)
