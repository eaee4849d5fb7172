"""The recall study: multi-query associative recall (Zoology's setting), length
generalisation of what was learned.

For each arm and each (length L, pairs N) of config.recall: seed 0 trains at every learning
rate of `recall.learning_rates` (recall.steps steps of train.batch_size sequences of L
tokens); the rate with the best accuracy at L trains seeds 1 .. seeds - 1. Each run is scored
(argmax accuracy on the queried values, `runtime.recall`) on fresh sequences of m x L tokens
for every m in `recall.multipliers`, one forward pass each: beyond L a sliding window cannot
reach the keys, and only what a model carries (attention over the whole context, or a
memory's state) can.
"""
from pathlib import Path

import numpy as np

from experiments.compare import study as common
from runtime import recall, training


def accuracy(run: training.Run, params, rc, length: int, pairs: int) -> dict:
  """{str(m * length): accuracy} on rc.eval_sequences fresh sequences per length."""
  predict = common.jitted(run, "predict", lambda p, t: run.apply(p, t).argmax(-1))
  out = {}
  for m in rc.multipliers:
    context = m * length
    _, mask = recall.sequence(0, 0, context, pairs)
    hits = []
    for b in recall.dataset(seed=10_000 + run.config.seed, context=context, num_pairs=pairs,
                            batch_size=rc.eval_batch_size, count=rc.eval_sequences):
      guess = np.asarray(predict(params, training.global_batch(run, b[:, :-1])))
      hits.append(guess[:, mask] == b[:, 1:][:, mask])
    out[str(context)] = float(np.concatenate(hits).mean())
  return out


def train_and_score(config, arm: str, length: int, pairs: int, lr: float, seed: int,
                    directory: Path) -> dict:
  rc = config.recall
  run = training.prepare(common.run_config(config, arm, seq_len=length, steps=rc.steps,
                                           seed=seed, learning_rate=lr))
  data = recall.dataset(seed=seed, context=length, num_pairs=pairs,
                        batch_size=run.config.batch_size)
  return common.train_run(run, data, directory,
                          lambda p: dict(accuracy=accuracy(run, p, rc, length, pairs)), "recall")


def run(config, arms: list[str], workdir: Path) -> dict:
  """{arms: {arm: {"<L>x<N>": setting summary}}, settings}; see the module docstring."""
  rc = config.recall
  out = {}
  for arm in arms:
    out[arm] = {}
    for length, pairs in zip(rc.lengths, rc.pairs):
      setting = f"{length}x{pairs}"
      folder = workdir / arm / setting
      sweep = {lr: train_and_score(config, arm, length, pairs, lr, 0, folder / f"lr{lr:g}" / "seed0")
               for lr in rc.learning_rates}
      best = max(rc.learning_rates, key=lambda lr: sweep[lr]["accuracy"][str(length)])
      runs = [sweep[best]] + [
          train_and_score(config, arm, length, pairs, best, seed, folder / f"lr{best:g}" / f"seed{seed}")
          for seed in range(1, config.seeds)]
      out[arm][setting] = dict(
          length=length, pairs=pairs, learning_rate=best, steps=rc.steps,
          sweep={f"{lr:g}": sweep[lr]["accuracy"][str(length)] for lr in rc.learning_rates},
          accuracy={m: common.mean_std([r["accuracy"][str(int(m) * length)] for r in runs])
                    for m in map(str, rc.multipliers)},
          nonfinite_steps=sum(r.get("nonfinite_steps", 0) for r in sweep.values()) + sum(
              r.get("nonfinite_steps", 0) for r in runs[1:]),
          seconds=sum(r["seconds"] for r in sweep.values()) + sum(r["seconds"] for r in runs[1:]),
          tokens_per_second=common.mean_std([r["tokens_per_second"] for r in runs
                                             if r.get("tokens_per_second")] or [0.0]))
  return dict(arms=out, multipliers=list(rc.multipliers),
              settings=[f"{length}x{pairs}" for length, pairs in zip(rc.lengths, rc.pairs)])
