"""Continual learning of language models: each cell (architecture, method, seed) trains one
model through the domain stream on the training runtime and is scored on every domain.

A cell is `runtime.loop.train` with one phase per domain (`Phase.context` = the domain's
index: the method's boundary hooks run between domains; -1 everywhere in a task-free
stream, whose phases only mark the evaluation points), the method's step
(`runtime.continual`), checkpoints every config.checkpoint_every steps and a resume in the
middle of any phase. Joint training draws every phase's batches from all domains at once
(the interleaved upper bound, evaluated at the same steps).

Scores, in nats per byte on `validation_sequences` windows of each domain's validation
split: the loss matrix L[i, j] (after domain i, on domain j), the initial losses b[j], the
boundary metrics (`cl_methods.metrics.loss_summary`) and the curves along training every
`eval_every` steps. Cells write WORKDIR/<arch>/<method>/seed<k>/cell.json and are skipped
when that exists (with the same settings).
"""
import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from cl_methods import metrics, registry, streams
from experiments import configs
from runtime import config_schema, continual, loop, text_data, training
from runtime.config_schema import Field, positive_int
from runtime.errors import UsageError
from runtime.workdir import write_json

ARCHITECTURES = ("transformer", "titans_lmm", "titans_mac", "titans_mag", "titans_mal", "hope",
                 "hope_attention", "memory_lm")
STREAMS = ("task_based", "task_free")
MEMORY_ARCHITECTURES = ("memory_lm",)  # the architectures with a memory layer

# Where each method's hyperparameters live in the config.
HPARAM_PATHS = {
    "finetune": {}, "joint": {},
    "er": {"buffer_size": "replay.buffer_size"},
    "derpp": {"buffer_size": "replay.buffer_size", "alpha": "derpp.alpha", "beta": "derpp.beta"},
    "agem": {"buffer_size": "replay.buffer_size", "eps": "agem.eps"},
    "ewc": {"strength": "ewc.strength"},
    "online_ewc": {"strength": "online_ewc.strength", "gamma": "online_ewc.gamma"},
    "si": {"strength": "si.strength", "damping": "si.damping"},
    "mas": {"strength": "mas.strength"},
    "lwf": {"temperature": "lwf.temperature"},
    "lora": {"rank": "lora.rank", "alpha": "lora.alpha", "learning_rate": "lora.learning_rate",
             "weight_decay": "lora.weight_decay"},
    "smf": {"top_t": "smf.top_t", "learning_rate": "smf.learning_rate"},
}

_POSITIVE = dict(low=0, low_open=True)
_METHOD_NAMES = registry.METHOD_NAMES + tuple(continual.LM_ONLY)
SCHEMA = (
    Field("validation_percent", "int", low=1, high=99),
    Field("model_overrides.*", "int", low=0, note="0: the size's value"), Field("stream", "str", choices=STREAMS),
    Field("boundary_width", "float", low=0, high=1),
    Field("architectures", "names", choices=ARCHITECTURES),
    Field("methods", "names", choices=_METHOD_NAMES),
    Field("memory_methods", "names", choices=_METHOD_NAMES, special=("",), note="\"\": none"),
    Field("seeds", "ints", low=0),
    Field("headline.architectures", "names", choices=ARCHITECTURES),
    Field("headline.methods", "names", choices=_METHOD_NAMES),
    Field("headline.seeds", "ints", low=0),
    positive_int("steps_per_domain"), positive_int("batch_size"), positive_int("seq_len"),
    Field("learning_rate", "float", **_POSITIVE), Field("warmup_steps", "int", low=0),
    positive_int("checkpoint_every"), positive_int("validation_sequences"),
    positive_int("eval_every"), positive_int("curve_sequences"),
    positive_int("consolidation_sequences"), positive_int("replay.buffer_size"),
    Field("derpp.alpha", "float", low=0), Field("derpp.beta", "float", low=0),
    Field("agem.eps", "float", **_POSITIVE), Field("ewc.strength", "float", low=0),
    Field("online_ewc.strength", "float", low=0),
    Field("online_ewc.gamma", "float", low=0, high=1, low_open=True),
    Field("si.strength", "float", low=0), Field("si.damping", "float", **_POSITIVE),
    Field("mas.strength", "float", low=0), Field("lwf.temperature", "float", **_POSITIVE),
    positive_int("lora.rank"), Field("lora.alpha", "float", low=0, note="0: the rank"),
    Field("lora.learning_rate", "float", **_POSITIVE), Field("lora.weight_decay", "float", low=0),
    positive_int("smf.top_t"), Field("smf.learning_rate", "float", **_POSITIVE),
)


def _names(value: str) -> list[str]:
  return config_schema.split_names(value)


def cells(config) -> list[tuple[str, str, int]]:
  """(architecture, method, seed) of every cell: the grid at config.seeds (with
  config.memory_methods on the architectures with a memory layer), then the headline cells
  at their extra seeds."""
  out = [(a, m, s) for a in _names(config.architectures)
         for m in _names(config.methods)
         + (_names(config.memory_methods) if a in MEMORY_ARCHITECTURES else [])
         for s in config.seeds]
  out += [(a, m, s) for a in _names(config.headline.architectures)
          for m in _names(config.headline.methods) for s in config.headline.seeds
          if (a, m, s) not in out]
  return out


def cell_config(config, architecture: str, seed: int) -> ml_collections.ConfigDict:
  """The pretraining config of one cell: the architecture's file at config.size with the
  study's training settings."""
  try:
    c = configs.lm_config(architecture, config.size)
  except ValueError as e:
    raise UsageError(f"config.size: {e}") from e
  for key, value in config.model_overrides.items():
    if value == 0:
      continue
    if key not in c.model:
      raise UsageError(f"config.model_overrides.{key}: {architecture} has no such model field "
                       f"(it has {sorted(k for k in c.model if k != 'name')})")
    c.model[key] = value
  domains = len(_names(config.domains))
  c.update(seed=seed, steps=domains * config.steps_per_domain, batch_size=config.batch_size,
           seq_len=config.seq_len, learning_rate=config.learning_rate,
           warmup_steps=min(config.warmup_steps, config.steps_per_domain),
           checkpoint_every=config.checkpoint_every, keep_checkpoints=1,
           log_every=config.eval_every)
  c.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
  return c


def method_hparams(config, method: str) -> dict:
  return {h: config_schema.get(config, path) for h, path in HPARAM_PATHS[method].items()}


def validate(config) -> tuple[list, dict]:
  """Checks every field, each cell's model config and method, and loads the domains (their
  validation splits must hold the windows scored); returns (cells, {domain: Corpus}).
  No compile, nothing written."""
  config_schema.check(config, SCHEMA)
  domains = _names(config.domains)
  if len(domains) < 2:
    raise UsageError(f"config.domains: a stream needs at least 2 domains, got {domains}")
  if len(set(domains)) != len(domains):
    raise UsageError(f"config.domains: {config.domains!r} names a domain twice")
  if config.steps_per_domain % config.eval_every:
    raise UsageError(f"config.steps_per_domain ({config.steps_per_domain}) must be a multiple "
                     f"of config.eval_every ({config.eval_every})")
  if config.curve_sequences > config.validation_sequences:
    raise UsageError(f"config.curve_sequences ({config.curve_sequences}) must be at most "
                     f"config.validation_sequences ({config.validation_sequences})")
  for name in domains:
    if name not in text_data.BUILTIN_CORPORA and not Path(name).expanduser().exists():
      raise UsageError(f"config.domains: unknown domain {name!r}; give built-in corpora "
                       f"({', '.join(text_data.BUILTIN_CORPORA)}) or text files or folders")
  grid = cells(config)
  for method in dict.fromkeys(m for _, m, _ in grid):
    continual.check_method(method)
  architectures = dict.fromkeys(a for a, _, _ in grid)
  runs = {a: training.prepare(cell_config(config, a, 0)) for a in architectures}
  for architecture, method in dict.fromkeys((a, m) for a, m, _ in grid):
    built = build_method(config, runs[architecture], method, 0)
    if config.stream == "task_free" and built.needs_boundaries and not built.interleaved:
      raise UsageError(f"method {method} cannot run on a task-free stream: "
                       f"{built.needs_boundaries}")
  corpora = {}
  for name in domains:
    corpus = text_data.load_corpus(name, config.validation_percent, "config.domains")
    have = text_data.num_windows(corpus.validation, config.seq_len)
    if have < config.validation_sequences:
      raise UsageError(f"config.domains: domain {name!r} has {have} validation windows of "
                       f"{config.seq_len} bytes, fewer than config.validation_sequences "
                       f"({config.validation_sequences}); use a larger domain or raise "
                       "config.validation_percent")
    if text_data.num_windows(corpus.train, config.seq_len) < config.batch_size:
      raise UsageError(f"config.domains: domain {name!r} has fewer training windows than one "
                       f"batch ({config.batch_size})")
    corpora[name] = corpus
  return grid, corpora


def windows(tokens: np.ndarray, seq_len: int, count: int, rng=None) -> np.ndarray:
  """`count` windows [count, seq_len + 1] of `tokens`: the first ones, or drawn by `rng`."""
  n = text_data.num_windows(tokens, seq_len)
  index = np.arange(count) if rng is None else rng.choice(n, count, replace=False)
  return np.stack([tokens[i * seq_len:(i + 1) * seq_len + 1] for i in index]).astype(np.int32)


def _setup_key(run: training.Run) -> str:
  """What a compile depends on: the run's config without its seed."""
  return json.dumps({k: v for k, v in run.config.to_dict().items() if k != "seed"},
                    sort_keys=True, default=str)


_LOSSES = {}


class Scorer:
  """Validation loss (nats/byte) of params on every domain's fixed windows (the jitted loss
  shared by every cell of the same training setup)."""

  def __init__(self, run: training.Run, validation: dict, eval_batch: int):
    self.validation, self.eval_batch = validation, eval_batch
    key = _setup_key(run)
    if key not in _LOSSES:
      _LOSSES[key] = jax.jit(lambda p, t: training.loss_fn(run, p, t))
    self.loss = _LOSSES[key]

  def __call__(self, params, limit: int | None = None) -> dict:
    out = {}
    for name, tokens in self.validation.items():
      tokens = tokens[:limit]
      chunks = [tokens[i:i + self.eval_batch] for i in range(0, len(tokens), self.eval_batch)]
      out[name] = sum(float(self.loss(params, c)) * len(c) for c in chunks) / len(tokens)
    return out


def build_method(config, run: training.Run, method: str, seed: int):
  return continual.build_method(method, run, method_hparams(config, method),
                                n_contexts=len(_names(config.domains)),
                                steps_per_context=config.steps_per_domain, seed=seed)


def phases(config, corpora: dict, interleaved: bool, seed: int) -> list[loop.Phase]:
  """One phase per domain: that domain's batches (task-based), all domains at once (joint),
  or the cross-faded mixture (task-free); with the consolidation windows of its domain."""
  names = list(corpora)
  steps = config.steps_per_domain
  train = [corpora[n].train for n in names]
  fade = streams.context_probabilities(len(names), steps, config.boundary_width)
  warmup = optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps),
       optax.constant_schedule(config.learning_rate)], [config.warmup_steps])
  rng = np.random.default_rng(seed)
  out = []
  for i, name in enumerate(names):
    common = dict(seq_len=config.seq_len, batch_size=config.batch_size,
                  process_index=jax.process_index(), process_count=jax.process_count())
    if interleaved:
      data = text_data.mixture_dataset(train, seed=seed + 1000 * i,
                                       domain_weights=lambda n: np.full(len(names), 1 / len(names)),
                                       **common)
    elif config.stream == "task_free":
      data = text_data.mixture_dataset(train, seed=seed + 1000 * i,
                                       domain_weights=lambda n, i=i: fade[i * steps + n], **common)
    else:
      data = text_data.lm_dataset(train[i], seed=seed, shuffle=True, repeat=True, **common)
    context = i if config.stream == "task_based" and not interleaved else -1
    out.append(loop.Phase(
        name=name, data=data, steps=steps, context=context,
        examples=windows(train[i], config.seq_len, config.consolidation_sequences, rng),
        learning_rate=warmup if i == 0 else optax.constant_schedule(config.learning_rate)))
  return out


_TRAINERS = {}


def trainer(run: training.Run, schedule, method_name: str, method) -> loop.Trainer:
  """One compiled Trainer per (training setup, method), shared by the seeds."""
  key = (_setup_key(run), method_name)
  if key not in _TRAINERS:
    _TRAINERS[key] = loop.Trainer(run, schedule, method)
  return _TRAINERS[key]


def run_cell(config, corpora: dict, architecture: str, method_name: str, seed: int,
             directory: Path) -> dict:
  """Trains and scores one cell in `directory` (resuming; skipped when cell.json exists)."""
  done = directory / "cell.json"
  settings = json.loads(json.dumps(config.to_dict(), default=str))
  if done.exists():
    saved = json.loads(done.read_text())
    if saved.get("study_config") == settings:
      return saved
    raise UsageError(f"{done} was run with other settings; use another --workdir, or delete "
                     "that cell's folder")
  run = training.prepare(cell_config(config, architecture, seed))
  names = list(corpora)
  method = build_method(config, run, method_name, seed)
  stream = phases(config, corpora, method.interleaved, seed)
  schedule = loop.run_schedule(run.config, stream)
  cell_trainer = trainer(run, schedule, method_name, method)
  validation = {n: windows(corpora[n].validation, config.seq_len, config.validation_sequences)
                for n in names}
  score = Scorer(run, validation, config.batch_size)
  directory.mkdir(parents=True, exist_ok=True)
  initial_file = directory / "initial.json"
  if not initial_file.exists():
    with jax.set_mesh(run.mesh):
      write_json(initial_file, score(cell_trainer.initial_state(seed)["params"]))
  initial = json.loads(initial_file.read_text())
  began = time.perf_counter()
  _, results = loop.train(
      run, stream, directory, trainer=cell_trainer, evaluate=score,
      label=f"{architecture}/{method_name}/seed{seed} ",
      curve=(config.eval_every, lambda p: score(p, config.curve_sequences)))
  matrix = [[results[row][col] for col in names] for row in names]
  curves = [json.loads(line) for line in (directory / "curves.jsonl").read_text().splitlines()]
  out = dict(architecture=architecture, method=method_name, seed=seed, domains=names,
             loss_matrix=matrix, initial_losses=[initial[n] for n in names],
             **metrics.loss_summary(matrix, [initial[n] for n in names]),
             curves=curves, seconds=sum(results[n]["seconds"] for n in names),
             wall_seconds_this_process=time.perf_counter() - began,
             num_params=run.num_params, study_config=settings)
  write_json(done, out)
  logging.info("%s/%s/seed%d: avg loss %.3f, BWT %.3f, forgetting %.3f", architecture,
               method_name, seed, out["avg_loss"], out["bwt"], out["forgetting"])
  return out
