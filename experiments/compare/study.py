"""The architecture studies behind `experiments.compare` (see experiments/configs/compare.py).

`validate` checks the whole config and builds every model abstractly (no compile), so bad
input, and arms whose parameter counts differ by more than `param_tolerance`, are refused
first. `run` then trains and scores every run of every study:

  recall    `recall_study`: multi-query associative recall, a learning-rate sweep on seed 0;
  repeat    `repeat_study`: the repeated-passage probe;
  ablation  `ablation_study`: HOPE's parts on language modelling.

Every training run is `runs.train_run` (`runtime.loop.train`) in its own folder,
WORKDIR/<study>/<arm>/<setting>/seed<k>/, and leaves its scores in <study>.json there; a
rerun skips the runs that have it and resumes the others from their checkpoints, and is
refused before anything trains if a finished run's settings differ from the config's. The
runs of all the studies train side by side in config.workers processes (`runs.Workers`), the
costliest first (model FLOPs of its training); a run that depends on others (a recall seed
on its arm's sweep) is queued as soon as they have run. Runs of one model and learning rate
share one compiled train step, whatever their seeds, and the compiled programs are saved in
WORKDIR/compile_cache (`runtime.compile_cache`), so a worker, or a rerun, that needs one
again loads it instead of compiling it. At the end,
WORKDIR/results.json holds every number and WORKDIR/results.md the tables (means and
standard deviations over seeds), beside the plots.
"""
import dataclasses
import time

import jax
import ml_collections

from experiments import configs
from experiments.compare import ablation_study, recall_study, repeat_study, report, runs
from experiments.compare.runs import corpora, model_spec, run_config
from runtime import compile_cache, config_schema, performance, recall, repeat, training
from runtime.config_schema import Field, Relation, positive_int
from runtime.errors import UsageError
from runtime.workdir import check_workdir, write_json

STUDIES = ("recall", "repeat", "ablation")
_MODULES = dict(recall=recall_study, repeat=repeat_study, ablation=ablation_study)
_POSITIVE_INTS = ("seeds", "recall.steps", "recall.batch_size", "recall.eval_sequences",
                  "recall.eval_batch_size", "repeat.passage", "repeat.distance", "repeat.steps",
                  "repeat.batch_size", "repeat.eval_sequences", "repeat.eval_batch_size",
                  "ablation.steps", "ablation.batch_size", "ablation.eval_batches")


def schema(config) -> tuple:
  """Every field of the compare config (`runtime.config_schema`); `train` takes the
  pretraining fields' rules."""
  train_fields = tuple(f for f in config_schema.LM_TRAINING if isinstance(f, Field)
                       and f.path in config.train)
  names = tuple(config.arm_models) + tuple(config.ablations)
  return (
      Field("arms", "names", choices=tuple(config.arm_models)),
      Field("studies", "names", choices=STUDIES),
      Field("workers", "int", low=0, note="0: one per CPU core on a CPU backend"),
      Field("param_tolerance", "float", low=0), Field("shape", "str"), Field("size", "str"),
      *config_schema.prefixed("train.", train_fields),
      Field("mesh.*", "int", low=1, special=(-1,), note="-1: the remaining devices"),
      Field("model.dim", "int", low=1), Field("model.num_layers", "int", low=1),
      Field("model.num_heads", "int", low=1),
      *(positive_int(path) for path in _POSITIVE_INTS),
      Field("recall.lengths", "ints", low=1), Field("recall.pairs", "ints", low=1,
                                                    high=len(recall.KEYS)),
      Field("recall.learning_rates", "floats", low=0, low_open=True),
      Field("recall.multipliers", "ints", low=1),
      Field("repeat.eval_distances", "ints", low=1),
      Field("repeat.source", "str"), Field("repeat.validation_percent", "int", low=1, high=99),
      Field("ablation.variants", "names", choices=names),
      Field("ablation.source", "str"),
      Field("ablation.validation_percent", "int", low=1, high=99),
      Field("arm_models.*.config", "str", choices=configs.LM_CONFIGS),
      Field("arm_models.*.model.mlp_dim", "int", low=1),
      Field("arm_models.*.model.window", "int", low=0, note="0: full attention"),
      Field("ablations.*.cms_inner_lr", "float", low=0),
      Relation("recall.eval_sequences", "multiple of", "recall.eval_batch_size"),
      Relation("repeat.eval_sequences", "multiple of", "repeat.eval_batch_size"),
  )


@dataclasses.dataclass
class Model:
  """An arm or variant, prepared (abstract model, mesh) at one training setting."""
  name: str
  base: str
  run: training.Run

  @property
  def params(self) -> int:
    return self.run.num_params


def _prepare(config, name: str, **kw) -> Model:
  c = run_config(config, name, **kw)
  return Model(name, model_spec(config, name)[0], training.prepare(c))


def _windows(config, names) -> dict:
  return {n: model_spec(config, n)[1].get("window", 0) for n in names}


def validate(config) -> tuple[dict, list[str]]:
  """Every check before any compile; returns ({arm or variant: Model}, studies)."""
  if not isinstance(config.arm_models, ml_collections.ConfigDict) or \
      not isinstance(config.ablations, ml_collections.ConfigDict):
    raise UsageError("config.arm_models must map arm names to {config, model}, and "
                     "config.ablations variant names to model overrides")
  shared = sorted(set(config.arm_models) & set(config.ablations))
  if shared:
    raise UsageError(f"config.ablations: {shared} are arm names too; rename the variants")
  config_schema.check(config, schema(config))
  arms = config_schema.split_names(config.arms)
  studies = config_schema.split_names(config.studies)
  runs.worker_count(config)
  if "ablation" in studies and "hope" not in config.arm_models:
    raise UsageError("config.ablation needs the `hope` arm in config.arm_models")
  rc, pc = config.recall, config.repeat
  if "recall" in studies:
    if len(rc.lengths) != len(rc.pairs):
      raise UsageError(f"config.recall.lengths {tuple(rc.lengths)} and config.recall.pairs "
                       f"{tuple(rc.pairs)} must have one entry per setting")
    for length, pairs in zip(rc.lengths, rc.pairs):
      recall.check(length, pairs, "config.recall")
  if "repeat" in studies:
    narrow = {n: w for n, w in _windows(config, arms).items() if w >= pc.distance}
    if narrow:
      raise UsageError(f"config.repeat.distance ({pc.distance}) must be larger than every "
                       f"arm's attention window, so that the second reading cannot see the "
                       f"first through it; windows: {narrow}")
    if min(pc.eval_distances) < pc.distance:
      raise UsageError(f"config.repeat.eval_distances {tuple(pc.eval_distances)} must be at "
                       f"least the training distance {pc.distance}")
  models, counts = {}, {}
  train = config.train
  for arm in arms:  # parameter counts do not depend on the sequence length
    models[arm] = _prepare(config, arm, seq_len=train.seq_len, steps=max(
        rc.steps, pc.steps, config.ablation.steps), seed=0)
    counts[arm] = models[arm].params
  if "ablation" in studies:
    for name in config_schema.split_names(config.ablation.variants):
      models[name] = models.get(name) or _prepare(config, name, seq_len=train.seq_len,
                                                  steps=config.ablation.steps, seed=0)
  batch_shards = {m.run.mesh.shape["data"] * m.run.mesh.shape["fsdp"] for m in models.values()}
  for field in ("recall.batch_size", "recall.eval_batch_size", "repeat.batch_size",
                "repeat.eval_batch_size", "ablation.batch_size"):
    size = config_schema.get(config, field)
    if any(size % n for n in batch_shards):
      raise UsageError(f"config.{field} ({size}) must be divisible by the mesh's data x fsdp "
                       f"size ({max(batch_shards)})")
  if counts:
    spread = max(counts.values()) / min(counts.values()) - 1
    if spread > config.param_tolerance:
      listing = ", ".join(f"{n} {c / 1e6:.3f}M" for n, c in counts.items())
      raise UsageError(f"parameter counts differ by {100 * spread:.1f}%, more than "
                       f"config.param_tolerance ({100 * config.param_tolerance:.0f}%): "
                       f"{listing}; adjust config.arm_models.<arm>.model.mlp_dim")
  texts = corpora(config, studies)  # missing or too little data fails here
  if "repeat" in studies:
    repeat.check(texts["repeat"].validation, pc.passage, max(pc.eval_distances),
                 "config.repeat")
  return models, studies


def run(config, workdir: str, command: str) -> dict:
  """Validates, prints the arms' parameters, runs every selected study, writes the report."""
  models, studies = validate(config)
  arms = config_schema.split_names(config.arms)
  print(params_table(models), flush=True)
  workdir = check_workdir(workdir)
  modules = {s: _MODULES[s] for s in studies}
  for study, module in modules.items():  # finished runs with other settings: refused now
    study_config = module.study_config(config)
    for directory, planned_config in module.planned(config, arms, workdir / study):
      runs.finished(directory, study, planned_config, study_config)
  began = time.perf_counter()
  cache = workdir / "compile_cache"
  workers = runs.Workers(config, {n: m.run.flops_per_token for n, m in models.items()}, cache)
  with compile_cache.using(cache):
    summaries = {study: module.submit(config, arms, workdir / study, workers)
                 for study, module in modules.items()}
    workers.run()
  out = {study: summary() for study, summary in summaries.items()}
  results = dict(command=command, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 machine=f"{performance.machine()}, jax {jax.__version__}",
                 wall_seconds=time.perf_counter() - began, seeds=config.seeds,
                 params={n: m.params for n, m in models.items()}, studies=out,
                 config=config.to_dict())
  results["plots"] = report.plot_all(results, workdir)
  table = report.markdown(results)
  (workdir / "results.md").write_text(table)
  write_json(workdir / "results.json", results)
  print(table, flush=True)
  return results


def params_table(models: dict) -> str:
  """The printed table: each arm's or variant's parameters and their spread."""
  low = min(m.params for m in models.values())
  lines = ["| arm | config | parameters | vs smallest |", "|---|---|---:|---:|"]
  lines += [f"| {n} | {m.base} | {m.params / 1e6:.3f}M | {100 * (m.params / low - 1):+.1f}% |"
            for n, m in models.items()]
  return "\n".join(lines)
