"""HOPE against Titans and the Transformer: the library behind `experiments.compare`.

`validate` checks the whole config and builds every arm's abstract model (no compile), so bad
input and parameter counts that differ by more than `param_tolerance` are refused first.
`run` then trains and measures each arm in turn:

  lm         train on the default corpus; validation loss and perplexity;
  ttl        with the lm run's parameters: loss by position on validation documents of
             ttl.context tokens, read in pieces of train.seq_len, states carried;
  continual  domain A then domain B in one run (one learning-rate schedule); A's and B's
             validation perplexity after each phase; the same A and B batches interleaved
             (A, B, A, ...) as the bound;
  recall     multi-query associative recall trained at recall.train_context, accuracy at
             every context in recall.contexts (one forward pass each).

Each arm's studies land in WORKDIR/arms/<arm>/<study>.json (atomic writes); a rerun skips
what is there and resumes unfinished training from its orbax checkpoints. Finally the run
writes WORKDIR/results.json, results.md and the plots.
"""
import dataclasses
import itertools
import json
import math
import os
import platform
import time
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from experiments import configs
from experiments.compare import report
from runtime import config_schema, evaluation, loop, recall, text_data, training
from runtime.config_schema import Field, Relation, positive_int
from runtime.errors import UsageError
from runtime.workdir import check_workdir, write_json

STUDIES = ("lm", "continual", "recall", "ttl")

_POSITIVE_INTS = ("lm.steps", "lm.eval_batches", "continual.steps_a", "continual.steps_b",
                  "continual.eval_batches", "recall.train_context", "recall.steps",
                  "recall.eval_sequences", "recall.eval_batch_size", "ttl.context", "ttl.batches")


def schema(config) -> tuple:
  """Every field of the compare config (`runtime.config_schema`); `train` and `mesh` take the
  pretraining fields' rules."""
  train_fields = tuple(f for f in config_schema.LM_TRAINING if isinstance(f, config_schema.Field)
                       and f.path in config.train)
  return (
      Field("arms", "names", choices=tuple(config.arm_models)),
      Field("studies", "names", choices=STUDIES),
      Field("seed", "int", low=0), Field("param_tolerance", "float", low=0),
      Field("shape", "str"), Field("size", "str"),
      *config_schema.prefixed("train.", train_fields),
      Field("mesh.*", "int", low=1, special=(-1,), note="-1: the remaining devices"),
      *(positive_int(path) for path in _POSITIVE_INTS),
      Field("lm.source", "str"),
      Field("lm.validation_percent", "int", low=1, high=99),
      Field("continual.validation_percent", "int", low=1, high=99),
      Field("continual.domain_a", "str"), Field("continual.domain_b", "str"),
      Field("recall.num_pairs", "int", low=1, high=len(recall.KEYS)),
      Field("recall.contexts", "ints", low=1),
      Field("arm_models.*.config", "str", choices=configs.LM_CONFIGS),
      Field("arm_models.*.model.mlp_dim", "int", low=1),
      Field("arm_models.*.model.window", "int", low=0, note="0: full attention"),
      Relation("ttl.context", "multiple of", "train.seq_len",
               when=lambda c: "ttl" in config_schema.split_names(c.studies)),
      Relation("recall.eval_sequences", "multiple of", "recall.eval_batch_size"),
  )


@dataclasses.dataclass
class Arm:
  name: str
  base: str  # the pretraining config's name
  configs: dict  # study -> pretraining ConfigDict
  run: training.Run  # of the lm config (the model is the same in every study)

  @property
  def params(self) -> int:
    return self.run.num_params


def arm_config(config, arm: str, study: str) -> ml_collections.ConfigDict:
  """The pretraining config of `arm` for `study`: the base file at config.shape, the arm's
  model overrides, the shared training settings and the study's steps."""
  spec = config.arm_models[arm]
  base = spec.get("config")
  if base not in configs.LM_CONFIGS:
    raise UsageError(f"config.arm_models.{arm}.config: unknown {base!r}; choose from "
                     f"{list(configs.LM_CONFIGS)}")
  try:
    c = configs.lm_config(base, config.shape)
  except ValueError as e:
    raise UsageError(f"config.shape: {e}") from e
  for key, value in spec.get("model", {}).items():
    if key == "name" or key not in c.model:
      raise UsageError(f"config.arm_models.{arm}.model.{key}: {base} has no such model field "
                       f"(it has {sorted(k for k in c.model if k != 'name')})")
    c.model[key] = value
  for key, value in config.train.items():
    c[key] = value
  c.seed = config.seed
  c.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
  c.keep_checkpoints = 1
  c.steps = dict(lm=config.lm.steps, ttl=config.lm.steps, recall=config.recall.steps,
                 continual=config.continual.steps_a + config.continual.steps_b)[study]
  c.eval_batches = dict(continual=config.continual.eval_batches).get(study, config.lm.eval_batches)
  study_config = config.continual if study == "continual" else config.lm
  c.data.validation_percent = study_config.validation_percent
  if study == "recall":
    c.seq_len = config.recall.train_context
  return c


def validate(config) -> tuple[list[Arm], list[str]]:
  """Every check before any compile: names, numbers, data, shapes, matched parameters."""
  if not isinstance(config.arm_models, ml_collections.ConfigDict):
    raise UsageError("config.arm_models must map arm names to {config, model}")
  config_schema.check(config, schema(config))
  arms = config_schema.split_names(config.arms)
  studies = config_schema.split_names(config.studies)
  tol = config.param_tolerance
  if "recall" in studies:
    for n in (config.recall.train_context,) + tuple(config.recall.contexts):
      recall.check(n, config.recall.num_pairs)
  if "continual" in studies:
    packages = _stdlib_packages()
    for k in ("domain_a", "domain_b"):
      config_schema.check(config, (Field(f"continual.{k}", "names", choices=tuple(packages)),))
    a, b = (set(config_schema.split_names(config.continual[k])) for k in ("domain_a", "domain_b"))
    shared = sorted(a & b)
    if shared:
      raise UsageError(f"config.continual: domain_a and domain_b share packages {shared}")
  for study in studies:
    for arm in arms:  # the pretraining fields and the warm-up bound, per study
      config_schema.check_lm(arm_config(config, arm, study))
  prepared = []
  for arm in arms:
    arm_configs = {s: arm_config(config, arm, s) for s in studies}
    run = training.prepare(arm_configs.get("lm") or next(iter(arm_configs.values())))
    if "recall" in studies and config.recall.eval_batch_size % (
        run.mesh.shape["data"] * run.mesh.shape["fsdp"]):
      raise UsageError(f"config.recall.eval_batch_size ({config.recall.eval_batch_size}) must "
                       f"be divisible by the mesh's data x fsdp size")
    prepared.append(Arm(arm, config.arm_models[arm].config, arm_configs, run))
  counts = [a.params for a in prepared]
  spread = max(counts) / min(counts) - 1
  if spread > tol:
    listing = ", ".join(f"{a.name} {a.params / 1e6:.3f}M" for a in prepared)
    raise UsageError(f"parameter counts differ by {100 * spread:.1f}%, more than "
                     f"config.param_tolerance ({100 * tol:.0f}%): {listing}; adjust "
                     f"config.arm_models.<arm>.model.mlp_dim")
  _load_data(config, studies)  # missing packages or too little data fail here
  return prepared, studies


def _stdlib_packages() -> set:
  root = text_data.stdlib_root()
  return {text_data.stdlib_package(f, root) for f in text_data._stdlib_files(root)}


def _load_data(config, studies) -> dict:
  corpora = {}
  if {"lm", "ttl"} & set(studies):
    corpora["lm"] = text_data.load_corpus(config.lm.source, config.lm.validation_percent, "config.lm")
  if "continual" in studies:
    for k in ("a", "b"):
      packages = tuple(n.strip() for n in config.continual[f"domain_{k}"].split(","))
      corpora[k] = text_data.load_stdlib_domain(packages, config.continual.validation_percent,
                                           f"config.continual.domain_{k}")
  return corpora


def token_budget(config, studies) -> dict:
  """Training tokens per study (the same for every arm)."""
  per_step = config.train.batch_size * config.train.seq_len
  out = {}
  if {"lm", "ttl"} & set(studies):
    out["lm"] = config.lm.steps * per_step
  if "continual" in studies:
    out["continual_a"] = config.continual.steps_a * per_step
    out["continual_b"] = config.continual.steps_b * per_step
    out["interleaved"] = out["continual_a"] + out["continual_b"]
  if "recall" in studies:
    out["recall"] = config.recall.steps * config.train.batch_size * config.recall.train_context
  return out


def arms_table(arms: list[Arm], budget: dict) -> str:
  """The printed table: parameters (and their spread) and the token budget of every arm."""
  low = min(a.params for a in arms)
  cols = list(budget)
  lines = ["| arm | config | parameters | vs smallest | " + " | ".join(
      f"{c} tokens" for c in cols) + " |", "|---|---|---:|---:|" + "---:|" * len(cols)]
  for a in arms:
    lines.append(f"| {a.name} | {a.base} | {a.params / 1e6:.3f}M | "
                 f"{100 * (a.params / low - 1):+.1f}% | "
                 + " | ".join(f"{budget[c]:,}" for c in cols) + " |")
  return "\n".join(lines)


@dataclasses.dataclass
class Compiled:
  """The compiled functions of one training setup, shared by the runs that train identically
  (so the LM and continual runs of an arm compile their step once)."""
  trainer: loop.Trainer
  loss: object
  predict: object
  pieces: dict = dataclasses.field(default_factory=dict)


_COMPILED = {}


def compiled(run: training.Run) -> Compiled:
  key = json.dumps({k: v for k, v in run.config.to_dict().items()
                    if k not in ("eval_batches", "data")}, sort_keys=True, default=str)
  if key not in _COMPILED:
    _COMPILED[key] = Compiled(loop.Trainer(run), jax.jit(lambda p, t: training.loss_fn(run, p, t)),
                              jax.jit(lambda p, t: run.apply(p, t).argmax(-1)))
  return _COMPILED[key]


def train_phases(run: training.Run, phases: list[loop.Phase], directory: Path,
                 evaluate) -> tuple[dict, dict]:
  """`runtime.loop.train` of `phases` in DIRECTORY (one schedule over all of them), with
  `evaluate(params)` saved to DIRECTORY/<phase>.json after each phase. Returns ({phase:
  result}, the final parameters)."""
  state, results = loop.train(run, phases, directory, trainer=compiled(run).trainer,
                              evaluate=evaluate, label=f"{directory.parent.name}/{directory.name} ")
  return results, state["params"]


def _lm_batches(tokens, config, *, shuffle: bool, seq_len: int | None = None) -> grain.IterDataset:
  """Training batches (shuffled, endless) or validation batches (in order, once)."""
  return text_data.lm_dataset(tokens, seq_len=seq_len or config.seq_len, batch_size=config.batch_size,
                         seed=config.seed, shuffle=shuffle, repeat=shuffle)


def validation_loss(run: training.Run, params, tokens: np.ndarray) -> dict:
  """Mean next-token loss (nats per byte) over the first eval_batches validation batches."""
  config = run.config
  loss = compiled(run).loss
  batches = itertools.islice(_lm_batches(tokens, config, shuffle=False), config.eval_batches)
  values = [float(loss(params, training.global_batch(run, b))) for b in batches]
  mean = float(np.mean(values))
  return dict(loss=mean, perplexity=math.exp(mean), bits_per_byte=mean / math.log(2),
              tokens=len(values) * config.batch_size * config.seq_len)


def loss_by_position(run: training.Run, params, tokens: np.ndarray, context: int,
                     batches: int) -> dict:
  """Per-piece mean loss on documents of `context` tokens read in pieces of seq_len, the
  in-context state carried (evaluation.piece_losses)."""
  config = run.config
  pieces = context // config.seq_len
  fns = compiled(run)
  if pieces not in fns.pieces:
    fns.pieces[pieces] = jax.jit(lambda p, t: evaluation.piece_losses(run, p, t, pieces))
  score = fns.pieces[pieces]
  total, rows = np.zeros(pieces), 0
  for b in itertools.islice(_lm_batches(tokens, config, shuffle=False, seq_len=context), batches):
    total += np.asarray(score(params, training.global_batch(run, b)), np.float64)
    rows += b.shape[0]
  by_piece = (total / (rows * config.seq_len)).tolist()
  return dict(context=context, piece=config.seq_len, documents=rows, loss_by_piece=by_piece,
              first_piece=by_piece[0], last_piece=by_piece[-1],
              mean=float(np.mean(by_piece)))


def recall_accuracy(run: training.Run, params, rc) -> dict:
  """Accuracy on the queried values at each context (fresh sequences, one forward each)."""
  predict = compiled(run).predict
  out = {}
  for context in rc.contexts:
    _, mask = recall.sequence(0, 0, context, rc.num_pairs)
    hits = []
    for b in recall.dataset(seed=run.config.seed + 1, context=context, num_pairs=rc.num_pairs,
                            batch_size=rc.eval_batch_size, count=rc.eval_sequences):
      batch = training.global_batch(run, b)
      guess = np.asarray(predict(params, batch[:, :-1]))
      hits.append(guess[:, mask] == b[:, 1:][:, mask])
    out[str(context)] = float(np.concatenate(hits).mean())
  return dict(accuracy=out, num_pairs=rc.num_pairs, sequences=rc.eval_sequences,
              train_context=rc.train_context)


def run_arm(config, arm: Arm, studies: list[str], corpora: dict, workdir: Path) -> dict:
  """Every selected study of one arm; each result saved as WORKDIR/arms/<arm>/<study>.json."""
  folder = workdir / "arms" / arm.name
  folder.mkdir(parents=True, exist_ok=True)
  results = {}
  for study in ("lm", "continual", "recall"):
    wanted = [s for s in studies if s == study or (study == "lm" and s == "ttl")]
    todo = [s for s in wanted if not (folder / f"{s}.json").exists()]
    for s in set(wanted) - set(todo):
      results[s] = json.loads((folder / f"{s}.json").read_text())
    if not todo:
      continue
    began = time.perf_counter()
    run = training.prepare(arm.configs[todo[0]])
    cfg = run.config
    logging.info("arm %s: study %s (%d steps)", arm.name, "+".join(todo), cfg.steps)
    if study == "lm":
      lm = corpora["lm"]

      def evaluate(params):
        out = dict(validation_loss(run, params, lm.validation))
        if "ttl" in studies:
          out["ttl"] = loss_by_position(run, params, lm.validation, config.ttl.context,
                                        config.ttl.batches)
        return out

      phase, params = train_phases(run, [loop.Phase("lm", _lm_batches(lm.train, cfg, shuffle=True),
                                               cfg.steps)], folder / "lm_run", evaluate)
      done = dict(phase["lm"])
      if "ttl" in todo:
        with jax.set_mesh(run.mesh):  # an lm run finished before ttl was asked for
          results["ttl"] = done.pop("ttl", None) or loss_by_position(
              run, params, lm.validation, config.ttl.context, config.ttl.batches)
        write_json(folder / "ttl.json", results["ttl"])
      if "lm" in todo:
        done.pop("ttl", None)
        results["lm"] = dict(done, seconds=time.perf_counter() - began)
        write_json(folder / "lm.json", results["lm"])
    elif study == "continual":
      a, b = corpora["a"], corpora["b"]
      evaluate = lambda p: dict(a=validation_loss(run, p, a.validation),
                                b=validation_loss(run, p, b.validation))
      ds_a = _lm_batches(a.train, cfg, shuffle=True)
      ds_b = _lm_batches(b.train, cfg, shuffle=True)
      seq, _ = train_phases(run, [loop.Phase("after_a", ds_a, config.continual.steps_a),
                                  loop.Phase("after_b", ds_b, config.continual.steps_b)],
                            folder / "continual_run", evaluate)
      mixed = grain.IterDataset.mix([_lm_batches(a.train, cfg, shuffle=True),
                                     _lm_batches(b.train, cfg, shuffle=True)])
      both, _ = train_phases(run, [loop.Phase("interleaved", mixed, cfg.steps)],
                             folder / "interleaved_run", evaluate)
      results["continual"] = continual_summary(seq["after_a"], seq["after_b"],
                                               both["interleaved"])
      results["continual"]["seconds"] = time.perf_counter() - began
      write_json(folder / "continual.json", results["continual"])
    else:
      rc = config.recall
      ds = recall.dataset(seed=cfg.seed, context=rc.train_context, num_pairs=rc.num_pairs,
                          batch_size=cfg.batch_size)
      phase, _ = train_phases(run, [loop.Phase("recall", ds, cfg.steps)], folder / "recall_run",
                              lambda p: recall_accuracy(run, p, rc))
      results["recall"] = dict(phase["recall"], seconds=time.perf_counter() - began)
      write_json(folder / "recall.json", results["recall"])
  return results


def continual_summary(after_a: dict, after_b: dict, interleaved: dict) -> dict:
  """Forgetting of A (perplexity increase from after A to after B), B's final perplexity and
  the interleaved run's A and B perplexity (the bound)."""
  ppl = lambda r, d: r[d]["perplexity"]
  return dict(
      a_after_a=ppl(after_a, "a"), a_after_b=ppl(after_b, "a"), b_after_a=ppl(after_a, "b"),
      b_after_b=ppl(after_b, "b"),
      forgetting_ppl=ppl(after_b, "a") - ppl(after_a, "a"),
      forgetting_loss=after_b["a"]["loss"] - after_a["a"]["loss"],
      interleaved_a=ppl(interleaved, "a"), interleaved_b=ppl(interleaved, "b"),
      phases=dict(after_a=after_a, after_b=after_b, interleaved=interleaved))


def _nonfinite(folder: Path) -> int:
  """Training steps with a non-finite loss over every phase of an arm's runs."""
  return sum(json.loads(p.read_text()).get("nonfinite_steps", 0)
             for p in folder.glob("*_run/*.json"))


def run(config, workdir: str, command: str) -> dict:
  """Validates, prints the arms' parameters and budgets, runs every arm, writes the report."""
  arms, studies = validate(config)
  corpora = _load_data(config, studies)
  budget = token_budget(config, studies)
  print(f"Arms at matched parameters (within {100 * config.param_tolerance:.0f}%) and "
        f"token budgets (tokens per study, the same data order for every arm):\n"
        f"{arms_table(arms, budget)}", flush=True)
  workdir = check_workdir(workdir)
  began = time.perf_counter()
  per_arm = {}
  for arm in arms:
    arm_began = time.perf_counter()
    per_arm[arm.name] = dict(config=arm.base, params=arm.params,
                             model=arm.configs[studies[0]].model.to_dict(),
                             **run_arm(config, arm, studies, corpora, workdir))
    done = per_arm[arm.name]
    done["seconds"] = sum(done.get(s, {}).get("seconds", 0.0)
                          for s in ("lm", "continual", "recall"))
    done["nonfinite_steps"] = _nonfinite(workdir / "arms" / arm.name)
    logging.info("arm %s done in %.0f s", arm.name, time.perf_counter() - arm_began)
  results = dict(command=command, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 machine=f"{platform.machine()} {os.cpu_count()}-core, jax {jax.__version__}, "
                         f"{jax.devices()[0].platform}",
                 seconds=sum(r["seconds"] for r in per_arm.values()),
                 wall_seconds=time.perf_counter() - began, studies=studies, token_budget=budget,
                 arms=per_arm, config=config.to_dict())
  results["plots"] = report.plot_all(results, workdir)
  table = report.markdown(results)
  (workdir / "results.md").write_text(table)
  write_json(workdir / "results.json", results)
  print(table, flush=True)
  return results
