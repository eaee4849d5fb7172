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
import importlib
import itertools
import json
import math
import os
import platform
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import compare_report, config_checks, data, evaluation, recall, training
from experiments.checkpointing import Checkpoints
from experiments.cli import UsageError
from experiments.configs.compare import ARM_CONFIGS, STUDIES
from experiments.metrics_writer import MetricsWriter

_POSITIVE_INTS = ("train.batch_size", "train.seq_len", "train.checkpoint_every", "train.log_every",
                  "lm.steps", "lm.eval_batches", "continual.steps_a", "continual.steps_b",
                  "continual.eval_batches", "recall.train_context", "recall.steps",
                  "recall.eval_sequences", "recall.eval_batch_size", "ttl.context", "ttl.batches")


@dataclasses.dataclass
class Arm:
  name: str
  base: str  # the pretraining config's name
  configs: dict  # study -> pretraining ConfigDict
  run: training.Run  # of the lm config (the model is the same in every study)

  @property
  def params(self) -> int:
    return self.run.num_params


def _get(config, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def _names(value, field: str, choices) -> list[str]:
  names = [n.strip() for n in str(value).split(",") if n.strip()]
  unknown = [n for n in names if n not in choices]
  if not names or unknown:
    raise UsageError(f"{field}: unknown name(s) {unknown or [value]}; choose from "
                     f"{sorted(choices)} (comma-separated)")
  if len(set(names)) != len(names):
    raise UsageError(f"{field}: {value!r} names an entry twice")
  return names


def arm_config(config, arm: str, study: str) -> ml_collections.ConfigDict:
  """The pretraining config of `arm` for `study`: the base file at config.shape, the arm's
  model overrides, the shared training settings and the study's steps."""
  spec = config.arm_models[arm]
  base = spec.get("config")
  if base not in ARM_CONFIGS:
    raise UsageError(f"config.arm_models.{arm}.config: unknown {base!r}; choose from "
                     f"{list(ARM_CONFIGS)}")
  try:
    c = importlib.import_module(f"experiments.configs.{base}").get_config(config.shape)
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
  arms = _names(config.arms, "config.arms", list(config.arm_models))
  studies = _names(config.studies, "config.studies", STUDIES)
  for path in _POSITIVE_INTS:
    v = _get(config, path)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
      raise UsageError(f"config.{path} must be a positive integer, got {v!r}")
  tol = config.param_tolerance
  if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
    raise UsageError(f"config.param_tolerance must be a number >= 0, got {tol!r}")
  seq = config.train.seq_len
  if "ttl" in studies and config.ttl.context % seq:
    raise UsageError(f"config.ttl.context ({config.ttl.context}) must be a multiple of "
                     f"config.train.seq_len ({seq})")
  if "recall" in studies:
    contexts = tuple(config.recall.contexts)
    if not contexts or any(isinstance(n, bool) or not isinstance(n, int) or n <= 0
                           for n in contexts):
      raise UsageError(f"config.recall.contexts must be positive integers, got {contexts!r}")
    for n in (config.recall.train_context,) + contexts:
      recall.check(n, config.recall.num_pairs)
    if config.recall.eval_sequences % config.recall.eval_batch_size:
      raise UsageError(f"config.recall.eval_sequences ({config.recall.eval_sequences}) must be a "
                       f"multiple of config.recall.eval_batch_size "
                       f"({config.recall.eval_batch_size})")
  if "continual" in studies:
    a, b = (tuple(_names(config.continual[k], f"config.continual.{k}", _stdlib_packages()))
            for k in ("domain_a", "domain_b"))
    shared = sorted(set(a) & set(b))
    if shared:
      raise UsageError(f"config.continual: domain_a and domain_b share packages {shared}")
  for study in studies:
    for arm in arms:  # config_checks and the warm-up bound, per study
      config_checks.check(arm_config(config, arm, study))
  prepared = []
  for arm in arms:
    configs = {s: arm_config(config, arm, s) for s in studies}
    run = training.prepare(configs.get("lm") or next(iter(configs.values())))
    if "recall" in studies and config.recall.eval_batch_size % (
        run.mesh.shape["data"] * run.mesh.shape["fsdp"]):
      raise UsageError(f"config.recall.eval_batch_size ({config.recall.eval_batch_size}) must "
                       f"be divisible by the mesh's data x fsdp size")
    prepared.append(Arm(arm, config.arm_models[arm].config, configs, run))
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
  root = data.stdlib_root()
  return {data.stdlib_package(f, root) for f in data._stdlib_files(root)}


def _load_data(config, studies) -> dict:
  corpora = {}
  if {"lm", "ttl"} & set(studies):
    corpora["lm"] = data.load_corpus(config.lm.source, config.lm.validation_percent, "config.lm")
  if "continual" in studies:
    for k in ("a", "b"):
      packages = tuple(n.strip() for n in config.continual[f"domain_{k}"].split(","))
      corpora[k] = data.load_stdlib_domain(packages, config.continual.validation_percent,
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


def _write_json(path: Path, value) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=1) + "\n")
  tmp.replace(path)


@dataclasses.dataclass
class Phase:
  name: str
  dataset: grain.IterDataset
  steps: int


@dataclasses.dataclass
class Compiled:
  """The jitted functions of one training setup, shared by the runs that train identically
  (so the LM and continual runs of an arm compile their step once)."""
  tx: object
  shardings: dict
  step: object
  init: dict  # the initial train state on the host (the step donates its input)
  loss: object
  predict: object
  pieces: dict = dataclasses.field(default_factory=dict)


_COMPILED = {}


def compiled(run: training.Run) -> Compiled:
  key = json.dumps({k: v for k, v in run.config.to_dict().items()
                    if k not in ("eval_batches", "data")}, sort_keys=True, default=str)
  if key not in _COMPILED:
    tx = training.optimizer(run.config, run)
    shardings = training.state_shardings(run, tx)
    with jax.set_mesh(run.mesh):
      init = jax.device_get(training.initial_state(run, tx, shardings))
    _COMPILED[key] = Compiled(
        tx, shardings, training.make_train_step(run, tx, shardings), init,
        jax.jit(lambda p, t: training.loss_fn(run, p, t)),
        jax.jit(lambda p, t: run.apply(p, t).argmax(-1)))
  return _COMPILED[key]


def train_phases(run: training.Run, phases: list[Phase], directory: Path,
                 evaluate) -> tuple[dict, dict]:
  """Trains through `phases` in order under one optimizer and schedule (run.config.steps =
  the phases' total); after each phase `evaluate(params)` is saved to DIRECTORY/<phase>.json.
  Resumes from the latest checkpoint in DIRECTORY/checkpoints. Returns ({phase: result},
  the final parameters)."""
  config = run.config
  directory.mkdir(parents=True, exist_ok=True)
  ends = list(itertools.accumulate(p.steps for p in phases))
  resume, corrupt = training.check_resumable(directory / "checkpoints", run)
  fns = compiled(run)
  tx, shardings, step_fn = fns.tx, fns.shardings, fns.step
  ckpt = Checkpoints(directory / "checkpoints", keep=config.keep_checkpoints)
  for step, problem in corrupt.items():
    ckpt.quarantine(step, problem)
  start = resume or 0
  current = next((i for i, end in enumerate(ends) if end > start), len(phases) - 1)
  iterator = iter(phases[current].dataset)
  results = {}
  with jax.set_mesh(run.mesh):
    if resume is None:
      state = jax.device_put(fns.init, shardings)
    else:
      target = training.abstract_state(run, tx, shardings)
      params, rest = ckpt.restore(resume, params=target["params"], data_iterator=iterator,
                                  train_state={k: target[k] for k in ("opt_state", "step", "rng")})
      state = dict(params=params, **rest)
      logging.info("%s: resumed at step %d", directory, resume)
    writer = MetricsWriter(directory, resume_step=start)
    for i in range(current, len(phases)):
      began, nonfinite = time.perf_counter(), 0
      for step in range(start, ends[i]):
        state, metrics = step_fn(state, training.global_batch(run, next(iterator)))
        nonfinite += ~jnp.isfinite(metrics["loss"])  # on device: no sync per step
        done = step + 1
        if done % config.log_every == 0 or done == ends[i]:
          metrics = jax.device_get(metrics)
          writer.write("metrics.jsonl", done, metrics)
          rate = (done - start) / (time.perf_counter() - began)
          logging.info("%s %s: step %d/%d loss %.4f (%.2f steps/s incl. compile)", directory.name,
                       phases[i].name, done, ends[-1], metrics["loss"], rate)
        if done % config.checkpoint_every == 0 and done < ends[i]:
          ckpt.save(done, params=state["params"], data_iterator=iterator, config=config.to_dict(),
                    train_state={k: state[k] for k in ("opt_state", "step", "rng")})
      out = directory / f"{phases[i].name}.json"
      if out.exists():
        results[phases[i].name] = json.loads(out.read_text())
      else:
        seconds = time.perf_counter() - began
        results[phases[i].name] = dict(evaluate(state["params"]), steps=phases[i].steps,
                                       nonfinite_steps=int(nonfinite), seconds=seconds)
        _write_json(out, results[phases[i].name])
      if i + 1 < len(phases):
        iterator = iter(phases[i + 1].dataset)  # saved with the step that begins the next phase
      if resume is None or ends[i] > resume:
        ckpt.save(ends[i], params=state["params"], data_iterator=iterator, config=config.to_dict(),
                  train_state={k: state[k] for k in ("opt_state", "step", "rng")})
      start = ends[i]
    ckpt.wait()
    ckpt.close()
    writer.close()
  return results, state["params"]


def _lm_batches(tokens, config, *, shuffle: bool, seq_len: int | None = None) -> grain.IterDataset:
  """Training batches (shuffled, endless) or validation batches (in order, once)."""
  return data.lm_dataset(tokens, seq_len=seq_len or config.seq_len, batch_size=config.batch_size,
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

      phase, params = train_phases(run, [Phase("lm", _lm_batches(lm.train, cfg, shuffle=True),
                                               cfg.steps)], folder / "lm_run", evaluate)
      done = dict(phase["lm"])
      if "ttl" in todo:
        with jax.set_mesh(run.mesh):  # an lm run finished before ttl was asked for
          results["ttl"] = done.pop("ttl", None) or loss_by_position(
              run, params, lm.validation, config.ttl.context, config.ttl.batches)
        _write_json(folder / "ttl.json", results["ttl"])
      if "lm" in todo:
        done.pop("ttl", None)
        results["lm"] = dict(done, seconds=time.perf_counter() - began)
        _write_json(folder / "lm.json", results["lm"])
    elif study == "continual":
      a, b = corpora["a"], corpora["b"]
      evaluate = lambda p: dict(a=validation_loss(run, p, a.validation),
                                b=validation_loss(run, p, b.validation))
      ds_a = _lm_batches(a.train, cfg, shuffle=True)
      ds_b = _lm_batches(b.train, cfg, shuffle=True)
      seq, _ = train_phases(run, [Phase("after_a", ds_a, config.continual.steps_a),
                                  Phase("after_b", ds_b, config.continual.steps_b)],
                            folder / "continual_run", evaluate)
      mixed = grain.IterDataset.mix([_lm_batches(a.train, cfg, shuffle=True),
                                     _lm_batches(b.train, cfg, shuffle=True)])
      both, _ = train_phases(run, [Phase("interleaved", mixed, cfg.steps)],
                             folder / "interleaved_run", evaluate)
      results["continual"] = continual_summary(seq["after_a"], seq["after_b"],
                                               both["interleaved"])
      results["continual"]["seconds"] = time.perf_counter() - began
      _write_json(folder / "continual.json", results["continual"])
    else:
      rc = config.recall
      ds = recall.dataset(seed=cfg.seed, context=rc.train_context, num_pairs=rc.num_pairs,
                          batch_size=cfg.batch_size)
      phase, _ = train_phases(run, [Phase("recall", ds, cfg.steps)], folder / "recall_run",
                              lambda p: recall_accuracy(run, p, rc))
      results["recall"] = dict(phase["recall"], seconds=time.perf_counter() - began)
      _write_json(folder / "recall.json", results["recall"])
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
  workdir = training.check_workdir(workdir)
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
  results["plots"] = compare_report.plot_all(results, workdir)
  table = compare_report.markdown(results)
  (workdir / "results.md").write_text(table)
  _write_json(workdir / "results.json", results)
  print(table, flush=True)
  return results
