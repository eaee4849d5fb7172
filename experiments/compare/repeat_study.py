"""The repeated-passage study: is a passage read once remembered one distance later?

Every arm trains (repeat.steps steps, one run per seed) on sequences P | F | P of the
training corpus (`runtime.repeat`: passage P of repeat.passage bytes, filler F of
repeat.distance bytes, longer than any arm's attention window). Each run is then scored on
validation text: for every distance in repeat.eval_distances (the training distance and
beyond), the mean next-token loss over the first and the second reading of P, in one forward
pass; and, at the training distance, the loss at every position of the sequence.
"""
from pathlib import Path

import numpy as np
import optax

from experiments.compare import study as common
from runtime import repeat, training


def position_losses(run: training.Run, params, tokens: np.ndarray, pc, distance: int,
                    seed: int) -> np.ndarray:
  """Mean next-token loss at each position [2 * passage + distance] over
  pc.eval_sequences sequences of validation `tokens`."""
  loss = common.jitted(run, "position_loss", lambda p, t: optax.softmax_cross_entropy_with_integer_labels(
      run.apply(p, t[:, :-1]), t[:, 1:]).mean(0))
  total = None
  batches = repeat.dataset(tokens, seed=10_000 + seed, passage=pc.passage, distance=distance,
                           batch_size=pc.eval_batch_size, count=pc.eval_sequences)
  for b in batches:
    value = np.asarray(loss(params, training.global_batch(run, b)), np.float64)
    total = value if total is None else total + value
  return total / (pc.eval_sequences // pc.eval_batch_size)


def scores(run: training.Run, params, validation: np.ndarray, pc) -> dict:
  out = {}
  for distance in pc.eval_distances:
    by_position = position_losses(run, params, validation, pc, distance, run.config.seed)
    out[str(distance)] = repeat.reading_losses(by_position, pc.passage, distance)
    if distance == pc.distance:
      out["by_position"] = by_position.tolist()
  return out


def run(config, arms: list[str], workdir: Path) -> dict:
  """{arms: {arm: summary}, distances, passage, distance}; see the module docstring."""
  pc = config.repeat
  corpus = common.corpora(config, ["repeat"])["repeat"]
  length = 2 * pc.passage + pc.distance
  out = {}
  for arm in arms:
    runs = []
    for seed in range(config.seeds):
      run_ = training.prepare(common.run_config(config, arm, seq_len=length, steps=pc.steps,
                                                seed=seed, batch_size=pc.batch_size))
      data = repeat.dataset(corpus.train, seed=seed, passage=pc.passage, distance=pc.distance,
                            batch_size=run_.config.batch_size)
      runs.append(common.train_run(run_, data, workdir / arm / f"seed{seed}",
                                   lambda p, r=run_: scores(r, p, corpus.validation, pc),
                                   "repeat"))
    out[arm] = dict(
        readings={d: {k: common.mean_std([r[d][k] for r in runs])
                      for k in ("first", "second", "gain")} for d in map(str, pc.eval_distances)},
        by_position=np.mean([r["by_position"] for r in runs], axis=0).tolist(),
        nonfinite_steps=sum(r.get("nonfinite_steps", 0) for r in runs),
        seconds=sum(r["seconds"] for r in runs),
        tokens_per_second=common.mean_std([r["tokens_per_second"] for r in runs
                                           if r.get("tokens_per_second")] or [0.0]))
  return dict(arms=out, distances=list(pc.eval_distances), passage=pc.passage,
              distance=pc.distance, steps=pc.steps)
