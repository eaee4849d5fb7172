"""The pieces every compare study shares: an arm's or variant's pretraining config, one
training run in its own folder (scored, skipped when finished, refused when its settings
changed), the compiled functions shared across seeds, the corpora, and mean ± std."""
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from experiments import configs
from runtime import loop, text_data, training
from runtime.errors import UsageError
from runtime.workdir import write_json


def model_spec(config, name: str) -> tuple[str, dict]:
  """(pretraining config file, model overrides) of an arm, or of a HOPE variant in
  config.ablations (the `hope` arm with the variant's overrides)."""
  if name in config.arm_models:
    spec = config.arm_models[name]
    return spec.config, {**config.model.to_dict(), **spec.get("model", {}).to_dict()}
  base, model = model_spec(config, "hope")
  return base, {**model, **config.ablations[name].to_dict()}


def run_config(config, name: str, *, seq_len: int, steps: int, seed: int,
               batch_size: int | None = None,
               learning_rate: float | None = None) -> ml_collections.ConfigDict:
  """The pretraining config of arm or variant `name`: its file at config.shape, the shared
  shape and its overrides, the shared training settings, then this run's length, steps, seed,
  batch size and learning rate (None: the shared settings')."""
  base, model = model_spec(config, name)
  try:
    c = configs.lm_config(base, config.shape)
  except ValueError as e:
    raise UsageError(f"config.shape: {e}") from e
  for key, value in model.items():
    if key == "name" or key not in c.model:
      where = f"ablations.{name}" if name in config.ablations else f"arm_models.{name}.model"
      raise UsageError(f"config.{where}.{key}: {base} has no such model field (it has "
                       f"{sorted(k for k in c.model if k != 'name')})")
    c.model[key] = value
  for key, value in config.train.items():
    c[key] = value
  c.update(seq_len=seq_len, steps=steps, seed=seed, keep_checkpoints=1,
           warmup_steps=min(c.warmup_steps, steps))
  if learning_rate is not None:
    c.learning_rate = learning_rate
  if batch_size is not None:
    c.batch_size = batch_size
  c.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
  return c


_CORPORA = {}


def corpora(config, studies) -> dict:
  """{study: Corpus} for the studies that read text (loaded once per source)."""
  out = {}
  for study in ("repeat", "ablation"):
    if study in studies:
      c = config[study]
      key = (c.source, c.validation_percent)
      if key not in _CORPORA:
        _CORPORA[key] = text_data.load_corpus(c.source, c.validation_percent,
                                              f"config.{study}")
      out[study] = _CORPORA[key]
  return out


_TRAINERS = {}


def trainer(run: training.Run) -> loop.Trainer:
  """One compiled Trainer per training setup, shared by the seeds (the seed is an argument
  of its initial state)."""
  key = json.dumps({k: v for k, v in run.config.to_dict().items() if k != "seed"},
                   sort_keys=True, default=str)
  if key not in _TRAINERS:
    _TRAINERS[key] = loop.Trainer(run)
  return _TRAINERS[key]


_JITTED = {}


def jitted(run: training.Run, what: str, fn):
  """`jax.jit(fn)` once per model and purpose (fn(params, tokens) may retrace per shape)."""
  key = (what, json.dumps(run.config.model.to_dict(), sort_keys=True, default=str))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(fn)
  return _JITTED[key]


def train_run(run: training.Run, data, directory: Path, evaluate, study: str,
              tokens_per_step: float | None = None) -> dict:
  """One training run of run.config.steps steps on `data` in DIRECTORY, scored by
  `evaluate(params)` into DIRECTORY/<study>.json, with the training speed in tokens per second
  after the first step, which compiles (from perf.jsonl's steps per second times
  `tokens_per_step`, default batch_size x seq_len) and the run's config. A run that has its
  scores is not repeated; one whose saved config differs is a UsageError."""
  done = directory / f"{study}.json"
  settings = json.loads(json.dumps(run.config.to_dict(), default=str))
  if done.exists():
    saved = json.loads(done.read_text())
    if saved.get("config") != settings:
      changed = sorted(k for k in set(settings) | set(saved.get("config", {}))
                       if settings.get(k) != saved.get("config", {}).get(k))
      raise UsageError(f"{done} was trained with other settings ({', '.join(changed)}); use "
                       f"another --workdir, or delete that run's folder")
    return saved
  _, results = loop.train(run, [loop.Phase(study, data, run.config.steps)], directory,
                          trainer=trainer(run), evaluate=evaluate,
                          label=f"{'/'.join(directory.parts[-4:])} ")
  perf = (directory / "perf.jsonl").read_text().splitlines() if (
      directory / "perf.jsonl").exists() else []
  per_step = tokens_per_step or run.config.batch_size * run.config.seq_len
  out = dict(results[study], tokens_per_second=json.loads(perf[-1])["steps_per_sec"] * per_step
             if perf else None, config=settings)
  write_json(done, out)
  return out


def costs(every_run: list[dict], timed: list[dict]) -> dict:
  """What the runs cost: non-finite steps and seconds summed over `every_run`, training
  tokens per second (mean ± std) over the `timed` runs that logged a speed."""
  speeds = [r["tokens_per_second"] for r in timed if r.get("tokens_per_second")]
  return dict(nonfinite_steps=sum(r.get("nonfinite_steps", 0) for r in every_run),
              seconds=sum(r["seconds"] for r in every_run),
              tokens_per_second=mean_std(speeds or [0.0]))


def mean_std(values) -> dict:
  """{mean, std (population; 0 for one value), values} of a list of numbers."""
  values = [float(v) for v in values]
  return dict(mean=float(np.mean(values)), std=float(np.std(values)), values=values)
