"""The ablation study: HOPE's parts, as in the Nested Learning paper's Table 6, at CPU scale.

Each variant of ablation.variants (an arm, or a HOPE variant of config.ablations: HOPE with
plain gradient descent instead of DGD, without weight decay, with CMS levels that never
change in context, with the CMS driven by the next-token gradient) trains ablation.steps
steps of language modelling on the default corpus, one run per seed, and is scored by its
validation loss over ablation.eval_batches batches in order. HOPE-Attention against the
Transformer asks whether the CMS earns its parameters.

A run of seed k sees the same training batches and the same validation batches whatever the
variant, so each variant also reports its loss minus the first variant's, seed by seed
(`paired`, mean ± std over seeds): the spread that the seeds share cancels there.
"""
import itertools
import math
from pathlib import Path

import ml_collections
import numpy as np

from experiments.compare import runs
from runtime import config_schema, text_data, training


def validation_loss(run: training.Run, params, tokens: np.ndarray, batches: int) -> dict:
  """Mean next-token loss (nats per byte) over the first `batches` validation batches."""
  c = run.config
  loss = runs.jitted(run, "loss", lambda p, t: training.loss_fn(run, p, t))
  data = text_data.lm_dataset(tokens, seq_len=c.seq_len, batch_size=c.batch_size, seed=c.seed,
                              shuffle=False, repeat=False)
  values = [float(loss(params, training.global_batch(run, b)))
            for b in itertools.islice(data, batches)]
  mean = float(np.mean(values))
  return dict(loss=mean, bits_per_byte=mean / math.log(2),
              tokens=len(values) * c.batch_size * c.seq_len)


def run_config(config, name: str, seed: int) -> ml_collections.ConfigDict:
  ac = config.ablation
  return runs.run_config(config, name, seq_len=config.train.seq_len, steps=ac.steps, seed=seed,
                         batch_size=ac.batch_size)


def folder(workdir: Path, name: str, seed: int) -> Path:
  return workdir / name / f"seed{seed}"


def study_config(config) -> dict:
  """`runs.study_settings` of config.ablation; the variants choose runs."""
  return runs.study_settings(config.ablation, "variants")


def planned(config, arms: list[str],
            workdir: Path) -> list[tuple[Path, ml_collections.ConfigDict]]:
  """(folder, run config) of every run of the study: every variant at every seed (`arms` is
  not used)."""
  del arms
  return [(folder(workdir, name, seed), run_config(config, name, seed))
          for name in config_schema.split_names(config.ablation.variants)
          for seed in range(config.seeds)]


def train_and_score(config, name: str, seed: int, directory: Path) -> tuple[dict, int]:
  """(scores, parameter count) of variant `name`'s run of `seed`."""
  ac = config.ablation
  corpus = runs.corpora(config, ["ablation"])["ablation"]
  run = training.prepare(run_config(config, name, seed))
  data = text_data.lm_dataset(corpus.train, seq_len=run.config.seq_len,
                              batch_size=run.config.batch_size, seed=seed, shuffle=True,
                              repeat=True)
  scores = runs.train_run(
      run, data, directory,
      lambda p: validation_loss(run, p, corpus.validation, ac.eval_batches), "ablation",
      study_config(config))
  return scores, run.num_params


def submit(config, arms: list[str], workdir: Path, workers: runs.Workers):
  """Queues every variant's run of every seed on `workers`; returns the summary to call once
  they have run: {variants: {name: summary}}; see the module docstring. `arms` is not used:
  the variants are config.ablation.variants."""
  del arms
  jobs = {name: [workers.submit(train_and_score, name, seed, folder(workdir, name, seed),
                                cost=workers.cost(name, run_config(config, name, seed)))
                 for seed in range(config.seeds)]
          for name in config_schema.split_names(config.ablation.variants)}
  return lambda: summary(config, {name: [j.result for j in js] for name, js in jobs.items()})


def summary(config, scores: dict) -> dict:
  """The study's results from each variant's (scores, parameter count), one per seed."""
  ac = config.ablation
  out = {}
  for name, results in scores.items():
    scored, params = zip(*results)
    out[name] = dict(
        loss=runs.mean_std([r["loss"] for r in scored]),
        bits_per_byte=runs.mean_std([r["bits_per_byte"] for r in scored]),
        params=params[0], **runs.costs(scored, scored))
  first = next(iter(out))
  for summary in out.values():
    summary["paired"] = runs.mean_std(np.subtract(summary["loss"]["values"],
                                                  out[first]["loss"]["values"]))
  return dict(variants=out, steps=ac.steps, first=first)
