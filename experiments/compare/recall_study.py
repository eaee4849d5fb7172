"""The recall study: multi-query associative recall (Zoology's setting), and how far what
was learned carries beyond the training length.

As in Zoology, one model learns every setting at once: each run trains recall.steps steps on
batches that cycle through the (length L, pairs N) settings of recall.lengths / recall.pairs
(`runtime.recall.mixture`, recall.batch_size sequences a batch), and the next-token loss
scores the queried values only (the other targets are random draws: keys, values, filler).
Seed 0 trains at every learning rate of recall.learning_rates; the rate with the best mean
accuracy over the settings at their training lengths trains seeds 1 .. seeds - 1 (queued as
soon as that arm's sweep has run, `runs.Workers`). Each run is scored (argmax accuracy on
the queried values) on fresh sequences of m x L tokens for every setting and every m in
recall.multipliers, one forward pass each: beyond L a sliding window cannot reach the keys,
and only what a model carries (attention over the whole context, or a memory's state) can.
"""
from pathlib import Path

import ml_collections
import numpy as np

from experiments.compare import runs
from runtime import recall, training


def accuracy(run: training.Run, params, rc) -> dict:
  """{"<L>x<N>": {str(m * L): accuracy}} on rc.eval_sequences fresh sequences per length."""
  predict = runs.jitted(run, "predict", lambda p, t: run.apply(p, t).argmax(-1))
  out = {}
  for length, pairs in zip(rc.lengths, rc.pairs):
    scores = out[f"{length}x{pairs}"] = {}
    for m in rc.multipliers:
      context = m * length
      _, mask = recall.sequence(0, 0, context, pairs)
      hits = []
      for b in recall.dataset(seed=10_000 + run.config.seed, context=context, num_pairs=pairs,
                              batch_size=rc.eval_batch_size, count=rc.eval_sequences):
        guess = np.asarray(predict(params, training.global_batch(run, b[:, :-1])))
        hits.append(guess[:, mask] == b[:, 1:][:, mask])
      scores[str(context)] = float(np.concatenate(hits).mean())
  return out


def run_config(config, arm: str, lr: float, seed: int) -> ml_collections.ConfigDict:
  rc = config.recall
  return runs.run_config(config, arm, seq_len=max(rc.lengths), steps=rc.steps, seed=seed,
                         batch_size=rc.batch_size, learning_rate=lr)


def folder(workdir: Path, arm: str, lr: float, seed: int) -> Path:
  return workdir / arm / f"lr{lr:g}" / f"seed{seed}"


def study_config(config) -> dict:
  """`runs.study_settings` of config.recall; the sweep's rates choose runs."""
  return runs.study_settings(config.recall, "learning_rates")


def planned(config, arms: list[str],
            workdir: Path) -> list[tuple[Path, ml_collections.ConfigDict]]:
  """(folder, run config) of every run the study may train: every arm at every rate and seed
  (seeds after 0 train at the best rate only)."""
  return [(folder(workdir, arm, lr, seed), run_config(config, arm, lr, seed))
          for arm in arms for lr in config.recall.learning_rates for seed in range(config.seeds)]


def train_and_score(config, arm: str, lr: float, seed: int, directory: Path) -> dict:
  rc = config.recall
  run = training.prepare(run_config(config, arm, lr, seed))
  data = recall.mixture(seed=seed, settings=list(zip(rc.lengths, rc.pairs)),
                        batch_size=run.config.batch_size, answers_only=True)
  return runs.train_run(run, data, directory, lambda p: dict(accuracy=accuracy(run, p, rc)),
                        "recall", study_config(config), rc.batch_size * float(np.mean(rc.lengths)))


def at_training_length(result: dict) -> float:
  """Mean accuracy over the settings at their own training lengths."""
  return float(np.mean([scores[s.split("x")[0]] for s, scores in result["accuracy"].items()]))


def best_rate(sweep: dict) -> float:
  """The learning rate of a sweep's scores {lr: scores} with the best `at_training_length`
  (the first of equals)."""
  return max(sweep, key=lambda lr: at_training_length(sweep[lr]))


def submit(config, arms: list[str], workdir: Path, workers: runs.Workers):
  """Queues the study's runs on `workers`: every arm's sweep, and each arm's other seeds as
  soon as its sweep has run. Returns the summary to call once they have all run:
  {arms: {arm: summary}, settings, multipliers}; see the module docstring."""
  rc = config.recall

  def queue(arm, lr, seed, then=None):
    return workers.submit(train_and_score, arm, lr, seed, folder(workdir, arm, lr, seed),
                          cost=workers.cost(arm, run_config(config, arm, lr, seed)), then=then)

  sweeps, seeded = {}, {}

  def swept(arm):
    if all(job.done for job in sweeps[arm].values()):
      best = best_rate({lr: job.result for lr, job in sweeps[arm].items()})
      seeded[arm] = [queue(arm, best, seed) for seed in range(1, config.seeds)]

  for arm in arms:
    sweeps[arm] = {lr: queue(arm, lr, 0, then=lambda _, arm=arm: swept(arm))
                   for lr in rc.learning_rates}
  return lambda: summary(config, {arm: {lr: j.result for lr, j in s.items()}
                                  for arm, s in sweeps.items()},
                         {arm: [j.result for j in jobs] for arm, jobs in seeded.items()})


def summary(config, sweeps: dict, seeded: dict) -> dict:
  """The study's results from each arm's sweep {lr: scores} and its other seeds' scores."""
  rc = config.recall
  settings = [f"{length}x{pairs}" for length, pairs in zip(rc.lengths, rc.pairs)]
  out = {}
  for arm, sweep in sweeps.items():
    best = best_rate(sweep)
    scored = [sweep[best]] + seeded[arm]
    out[arm] = dict(
        learning_rate=best, steps=rc.steps,
        sweep={f"{lr:g}": {s: sweep[lr]["accuracy"][s][s.split("x")[0]] for s in settings}
               for lr in rc.learning_rates},
        accuracy={s: {m: runs.mean_std([r["accuracy"][s][str(int(m) * int(s.split("x")[0]))]
                                          for r in scored])
                      for m in map(str, rc.multipliers)} for s in settings},
        **runs.costs(list(sweep.values()) + scored[1:], scored))
  return dict(arms=out, settings=settings, multipliers=list(rc.multipliers))
