"""Continual-learning experiments: validate a config, run (method, scenario) pairs, write results.

The library half of `experiments.continual` (which only adds the flags and `main`), so that
tests and other tools can use it without defining command-line flags. See that module for
what is written where; the config is `experiments/configs/continual.py`.

Every config value is checked by `validate` before any data is loaded or anything is
compiled; bad input raises `UsageError` naming the field and what it accepts.
"""
import copy
import dataclasses
import json
import os
import time

from absl import logging
import optax

from cl_methods import benchmark_models
from cl_methods import datasets
from cl_methods import plots
from cl_methods import registry
from cl_methods import regularization
from cl_methods import runner
from cl_methods import scenarios
from cl_methods import streams
from runtime import config_schema
from runtime.config_schema import Field, Relation, positive_int
from runtime.errors import UsageError
from runtime.workdir import write_json

SCENARIO_KEYS = {"task": "task_il", "domain": "domain_il", "class": "class_il"}
OPTIMIZERS = ("adam", "sgd")

# Where each method's hyperparameters live in the config ({scenario} = task_il, ...).
HPARAM_PATHS = {
    "finetune": {}, "joint": {}, "separate_heads": {},
    "er": {"buffer_size": "replay.buffer_size"},
    "derpp": {"buffer_size": "replay.buffer_size", "alpha": "derpp.alpha",
              "beta": "derpp.beta"},
    "agem": {"buffer_size": "replay.buffer_size", "eps": "agem.eps"},
    "ewc": {"strength": "ewc.strength.{scenario}", "fisher": "ewc.fisher"},
    "online_ewc": {"strength": "online_ewc.strength.{scenario}", "gamma": "online_ewc.gamma",
                   "fisher": "online_ewc.fisher"},
    "si": {"strength": "si.strength.{scenario}", "damping": "si.damping"},
    "mas": {"strength": "mas.strength.{scenario}"},
    "lwf": {"temperature": "lwf.temperature"},
    "xdg": {"gate_fraction": "xdg.gate_fraction"},
    "packnet": {"prune_fraction": "packnet.prune_fraction",
                "retrain_fraction": "packnet.retrain_fraction"},
    "icarl": {"exemplars_per_class": "icarl.exemplars_per_class"},
    "generative_classifier": {
        "hidden": "generative_classifier.hidden", "latent": "generative_classifier.latent",
        "importance_samples": "generative_classifier.importance_samples",
        "decoder_std": "generative_classifier.decoder_std"},
}

# Fields that every method reads, and so may be swept for any of them.
SWEEPABLE_TRAINING_FIELDS = ("learning_rate", "batch_size", "steps_per_context")

_OPEN = dict(low=0, low_open=True)
_FRACTION = dict(low=0, high=1, low_open=True, high_open=True)
SCHEMA = (
    positive_int("n_contexts"), Field("test_fraction", "float", **_FRACTION),
    Field("mnist1d_examples", "int", low=10), Field("boundary_width", "float", low=0, high=1),
    Field("seed", "int", low=0), Field("learning_rate", "float", **_OPEN),
    positive_int("batch_size"), positive_int("steps_per_context"), positive_int("eval_every"),
    positive_int("curve_examples"), positive_int("consolidation_examples"),
    positive_int("replay.buffer_size"), Field("derpp.alpha", "float", low=0),
    Field("derpp.beta", "float", low=0), Field("agem.eps", "float", **_OPEN),
    Field("online_ewc.gamma", "float", low=0, high=1, low_open=True),
    *(Field(f"{method}.fisher", "str", choices=regularization.FISHER_ESTIMATES)
      for method in ("ewc", "online_ewc")),
    Field("si.damping", "float", **_OPEN), Field("lwf.temperature", "float", **_OPEN),
    Field("xdg.gate_fraction", "float", low=0, high=1, high_open=True),
    Field("packnet.prune_fraction", "float", **_FRACTION),
    Field("packnet.retrain_fraction", "float", low=0, high=1, high_open=True),
    positive_int("icarl.exemplars_per_class"), positive_int("generative_classifier.hidden"),
    positive_int("generative_classifier.latent"),
    positive_int("generative_classifier.importance_samples"),
    Field("generative_classifier.decoder_std", "float", **_OPEN),
    *(Field(f"{method}.strength.{key}", "float", low=0)
      for method in ("ewc", "online_ewc", "si", "mas") for key in SCENARIO_KEYS.values()),
    Field("stream", "str", choices=runner.STREAMS), Field("optimizer", "str", choices=OPTIMIZERS),
    Field("model.kind", "str", choices=benchmark_models.MODEL_KINDS),
    Field("shuffle_classes", "bool"), Field("compare_interleaved", "bool"),
    Field("model.hidden", "ints", low=1),
    Field("model.conv_channels", "ints", low=1, special=((),), note="(): none, for mlp"),
    Field("method", "str", choices=registry.METHOD_NAMES + ("all",)),
    Field("scenario", "str", choices=scenarios.SCENARIOS + ("all",)),
    Relation("eval_every", "divides", "steps_per_context"),
)
FIELDS = {f.path: f for f in SCHEMA if isinstance(f, Field)}


def _get(config, path: str):
  try:
    return config_schema.get(config, path)
  except KeyError:
    raise UsageError(f"config.{path}: no such field") from None


def _set(config, path: str, value):
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def parse_benchmark(benchmark: str):
  """'split_digits' -> ('split', 'digits'); raises UsageError for unknown parts."""
  kind, _, dataset = str(benchmark).partition("_")
  choices = [f"{k}_{d}" for k in streams.KINDS for d in datasets.DATASETS]
  if kind not in streams.KINDS or dataset not in datasets.DATASETS:
    raise UsageError(f"config.benchmark: unknown benchmark {benchmark!r}; choose "
                         f"{{{','.join(streams.KINDS)}}}_{{{','.join(datasets.DATASETS)}}}, "
                         f"e.g. {choices[0]}")
  if kind == "rotated" and dataset == "mnist1d":
    raise UsageError("config.benchmark: rotated_mnist1d is not possible: rotation needs "
                         "2-D images and mnist1d signals are 1-D (use split_ or permuted_)")
  return kind, dataset


def validate(config):
  """Checks every config value before anything is loaded or compiled.

  Returns:
    (pairs, kind, dataset): the (method, scenario) pairs to run, and the benchmark's context
    kind and dataset.
  """
  config_schema.check(config, SCHEMA)
  if config.model.kind == "conv" and not config.model.conv_channels:
    raise UsageError("config.model.conv_channels: the conv model needs at least one layer")

  kind, dataset = parse_benchmark(config.benchmark)
  if dataset in datasets.NEEDS_DATA_DIR and not config.data_dir:
    raise UsageError(f"config.data_dir: benchmark {config.benchmark} reads {dataset} "
                         "files from a local path; set data_dir")
  if config.model.kind == "conv" and dataset == "mnist1d":
    raise UsageError("config.model.kind: conv needs image inputs; mnist1d is 1-D (use mlp)")

  names = registry.METHOD_NAMES if config.method == "all" else (config.method,)
  scens = scenarios.SCENARIOS if config.scenario == "all" else (config.scenario,)
  pairs = []
  for scenario in scens:
    for name in names:
      entry = registry.ENTRIES[name]
      blocked = (not entry.serves(scenario) or
                 (config.stream == "task_free" and entry.needs_boundaries
                  and not entry.interleaved))
      if not blocked:
        pairs.append((name, scenario))
  if config.method != "all":
    entry = registry.ENTRIES[config.method]
    if config.scenario != "all" and not entry.serves(config.scenario):
      raise UsageError(f"config.method: {config.method} cannot serve "
                           f"{scenarios.SCENARIO_NAMES[config.scenario]}: "
                           f"{entry.unsupported[config.scenario]}")
    if config.stream == "task_free" and entry.needs_boundaries:
      raise UsageError(f"config.stream: {config.method} needs context boundaries "
                           f"({entry.needs_boundaries}); a task-free stream has none")
  if not pairs:
    raise UsageError(f"config.method: {config.method} serves none of the scenarios "
                         f"{', '.join(scens)}")

  knob, values = config.sweep.knob, config.sweep.points
  if knob:
    if len(pairs) != 1:
      raise UsageError("config.sweep.knob: a sweep needs one method and one scenario "
                           "(not 'all')")
    current = _get(config, knob)
    if isinstance(current, bool) or not isinstance(current, (int, float)):
      raise UsageError(f"config.sweep.knob: {knob} is not a numeric field")
    name, scenario = pairs[0]
    relevant = [p.format(scenario=SCENARIO_KEYS[scenario]) for p in HPARAM_PATHS[name].values()]
    relevant += list(SWEEPABLE_TRAINING_FIELDS)
    if knob not in relevant:
      raise UsageError(f"config.sweep.knob: {knob} does not affect {name} in "
                           f"{scenarios.SCENARIO_NAMES[scenario]}; choose from "
                           f"{', '.join(relevant)}")
    if not isinstance(values, (tuple, list)) or not values:
      raise UsageError("config.sweep.points: give the values to try, e.g. '(1e3,1e6)'")
    for v in values:
      value = int(v) if isinstance(current, int) and float(v).is_integer() else v
      field = FIELDS.get(knob, Field(knob, "int" if isinstance(current, int) else "float"))
      problem = dataclasses.replace(field, path=f"sweep.points: {knob}").problem(value)
      if problem:
        raise UsageError(problem)
  elif values:
    raise UsageError("config.sweep.points: set config.sweep.knob too")
  return pairs, kind, dataset


def method_hparams(config, name: str, scenario: str) -> dict:
  return {h: _get(config, path.format(scenario=SCENARIO_KEYS[scenario]))
          for h, path in HPARAM_PATHS[name].items()}


def load_contexts(config, kind, dataset):
  """Loads the data and builds the contexts; file and shape problems become UsageErrors."""
  try:
    data = datasets.load(dataset, data_dir=config.data_dir, test_fraction=config.test_fraction,
                         seed=config.seed, mnist1d_examples=config.mnist1d_examples)
  except (ValueError, KeyError, OSError) as e:
    raise UsageError(f"config.benchmark: {config.benchmark}: {e}") from e
  if kind == "split" and data.n_classes % config.n_contexts:
    raise UsageError(f"config.n_contexts: {data.n_classes} classes of {dataset} cannot be "
                         f"split evenly into {config.n_contexts} contexts")
  if kind == "rotated" and not data.is_image:
    raise UsageError(f"config.benchmark: {config.benchmark}: rotation needs images, and "
                         f"{dataset} inputs have shape {data.input_shape}")
  if config.model.kind == "conv" and not data.is_image:
    raise UsageError(f"config.model.kind: conv needs image inputs, and {dataset} inputs "
                         f"have shape {data.input_shape}")
  try:
    return streams.build(kind, data, config.n_contexts, seed=config.seed,
                         shuffle_classes=config.shuffle_classes)
  except ValueError as e:
    raise UsageError(f"config.benchmark: {config.benchmark}: {e}") from e


def settings_of(config) -> runner.RunSettings:
  return runner.RunSettings(
      steps_per_context=config.steps_per_context, batch_size=config.batch_size,
      eval_every=config.eval_every, curve_examples=config.curve_examples,
      consolidation_examples=config.consolidation_examples, stream=config.stream,
      boundary_width=config.boundary_width, seed=config.seed)


def run_one(config, contexts, name, scenario):
  """Builds the model and method for one (method, scenario) pair and runs it."""
  entry = registry.ENTRIES[name]
  layout = scenarios.output_layout(contexts, scenario, separate_heads=entry.separate_heads)
  model = benchmark_models.build(
      config.model.kind, contexts.data.input_shape, layout.n_units,
      hidden=tuple(config.model.hidden), conv_channels=tuple(config.model.conv_channels),
      seed=config.seed)
  method = registry.build(name, model, layout, method_hparams(config, name, scenario),
                          steps_per_context=config.steps_per_context, seed=config.seed)
  tx = (optax.adam if config.optimizer == "adam" else optax.sgd)(config.learning_rate)
  logging.info("%s on %s: %s", name, config.benchmark, layout.description)
  return runner.run(method, contexts, layout, model.params, tx, settings_of(config),
                    log=logging.info), layout


def write_run(folder, config, name, scenario, result, layout, interleaved=None):
  """results.json, accuracy_matrix.png and accuracy_curves.png of one run."""
  os.makedirs(folder, exist_ok=True)
  metrics = result.metrics()
  label = f"{name}, {scenarios.SCENARIO_NAMES[scenario]}, {config.benchmark}"
  curves = {"steps": result.curve_steps.tolist(), "accuracy": result.curve_accuracy.tolist(),
            "boundaries": result.boundary_steps.tolist()}
  if interleaved is not None:
    curves["interleaved_steps"] = interleaved.curve_steps.tolist()
    curves["interleaved_accuracy"] = interleaved.curve_accuracy.tolist()
  out = {"method": name, "scenario": scenario, "benchmark": config.benchmark,
         "layout": layout.description, "accuracy_matrix": result.accuracy_matrix.tolist(),
         "random_init_accuracy": result.random_init_accuracy.tolist(), **metrics,
         "curves": curves, "seconds": result.seconds, "config": config.to_dict()}
  write_json(os.path.join(folder, "results.json"), out)
  plots.accuracy_matrix(result.accuracy_matrix, os.path.join(folder, "accuracy_matrix.png"),
                        f"R[i, j]: {label}")
  plots.accuracy_curves(result.curve_steps, result.curve_accuracy, result.boundary_steps,
                        os.path.join(folder, "accuracy_curves.png"), f"sequential: {label}",
                        interleaved=None if interleaved is None else
                        (interleaved.curve_steps, interleaved.curve_accuracy))
  return metrics


def _pct(x):
  return f"{100 * x:.1f}"


def grid_markdown(rows, benchmark, seconds, command):
  """Two markdown tables: ACC per method x scenario, and every metric per run."""
  present = [s for s in scenarios.SCENARIOS if any(r["scenario"] == s for r in rows)]
  names = list(dict.fromkeys(r["method"] for r in rows))
  acc = {(r["method"], r["scenario"]): r["acc"] for r in rows}
  lines = [f"Average accuracy ACC (%) after the last context, {benchmark}; "
           f"total {seconds:.0f} s for {len(rows)} runs.", "",
           f"Command: `{command}`", "",
           "| method | family | " + " | ".join(scenarios.SCENARIO_NAMES[s] for s in present)
           + " |", "|---|---|" + "---:|" * len(present)]
  for n in names:
    cells = [_pct(acc[n, s]) if (n, s) in acc else "n/a" for s in present]
    lines.append(f"| {n} | {registry.ENTRIES[n].family} | " + " | ".join(cells) + " |")
  lines += ["", "| scenario | method | ACC | BWT | FWT | forgetting | LA | min-ACC | s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {scenarios.SCENARIO_NAMES[r['scenario']]} | {r['method']} | "
                 f"{_pct(r['acc'])} | {_pct(r['bwt'])} | {_pct(r['fwt'])} | "
                 f"{_pct(r['forgetting'])} | {_pct(r['learning_accuracy'])} | "
                 f"{_pct(r['min_acc'])} | {r['seconds']:.1f} |")
  return "\n".join(lines) + "\n"


def run_single(config, contexts, name, scenario, workdir):
  """One method on one scenario (and joint training for the curves plot) into workdir."""
  result, layout = run_one(config, contexts, name, scenario)
  interleaved = None
  if config.compare_interleaved and name != "joint":
    interleaved, _ = run_one(config, contexts, "joint", scenario)
  metrics = write_run(workdir, config, name, scenario, result, layout, interleaved)
  print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))


def run_grid(config, contexts, pairs, workdir, command):
  """Every (method, scenario) pair, joint first per scenario; writes results.md and grid.json."""
  start = time.time()
  rows = []
  for scenario in scenarios.SCENARIOS:
    names = [n for n, s in pairs if s == scenario]
    names.sort(key=lambda n: n != "joint")
    joint = None
    for name in names:
      result, layout = run_one(config, contexts, name, scenario)
      if name == "joint":
        joint = result
      metrics = write_run(os.path.join(workdir, scenario, name), config, name, scenario,
                          result, layout, None if name == "joint" else joint)
      rows.append({"method": name, "scenario": scenario, **metrics,
                   "seconds": result.seconds})
      logging.info("%s / %s: ACC %.3f BWT %.3f (%.1f s)", scenario, name, metrics["acc"],
                   metrics["bwt"], result.seconds)
  seconds = time.time() - start
  table = grid_markdown(rows, config.benchmark, seconds, command)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table)
  write_json(os.path.join(workdir, "grid.json"),
             {"runs": rows, "seconds": seconds, "config": config.to_dict()})
  print(table)


def run_sweep(config, contexts, name, scenario, workdir):
  """One run per point of config.sweep.knob; writes sweep.md, sweep.json and the
  plasticity-stability plot."""
  knob = config.sweep.knob
  field_is_int = isinstance(_get(config, knob), int)
  rows = []
  for v in config.sweep.points:
    value = int(v) if field_is_int else float(v)
    swept = copy.deepcopy(config)
    _set(swept, knob, value)
    result, layout = run_one(swept, contexts, name, scenario)
    metrics = write_run(os.path.join(workdir, "sweep", f"{value:g}"), swept, name, scenario,
                        result, layout)
    rows.append({"value": value, **metrics, "seconds": result.seconds})
  values = [r["value"] for r in rows]
  plots.plasticity_stability(knob, values, rows, os.path.join(workdir, "plasticity_stability.png"),
                             f"{name}, {scenarios.SCENARIO_NAMES[scenario]}, {config.benchmark}")
  lines = [f"| {knob} | ACC | BWT | forgetting | LA | s |", "|---:|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['value']:g} | {_pct(r['acc'])} | {_pct(r['bwt'])} | "
            f"{_pct(r['forgetting'])} | {_pct(r['learning_accuracy'])} | {r['seconds']:.1f} |"
            for r in rows]
  with open(os.path.join(workdir, "sweep.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  write_json(os.path.join(workdir, "sweep.json"), {"knob": knob, "runs": rows})
  print("\n".join(lines))
