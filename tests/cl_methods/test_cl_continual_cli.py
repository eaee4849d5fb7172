"""experiments.continual (and its library half, experiments/continual/study.py): validation of bad input, one
run end to end through the command line, grid and sweep outputs."""
import json
import os
import subprocess
import sys

import pytest

from experiments import cli
from experiments.continual import study
from experiments.configs import continual as continual_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--config.n_contexts=2", "--config.steps_per_context=4", "--config.eval_every=2",
        "--config.batch_size=8", "--config.curve_examples=16", "--config.model.hidden=(8,)"]


def _config(**overrides):
  config = continual_config.get_config()
  for path, value in overrides.items():
    study._set(config, path.replace("__", "."), value)
  return config


@pytest.mark.parametrize("overrides, message", [
    ({"method": "foo"}, "config.method must be one of 'finetune', 'joint'"),
    ({"scenario": "klass"}, "config.scenario must be one of 'task', 'domain', 'class', 'all', got 'klass'"),
    ({"benchmark": "split_imagenet"}, "config.benchmark: unknown benchmark 'split_imagenet'"),
    ({"benchmark": "rotated_mnist1d"}, "rotation needs 2-D images"),
    ({"benchmark": "split_idx"}, "config.data_dir: benchmark split_idx reads idx files"),
    ({"method": "separate_heads", "scenario": "class"},
     "separate_heads cannot serve Class-IL: it needs the context identity at test time"),
    ({"method": "xdg", "scenario": "domain"}, "xdg cannot serve Domain-IL"),
    ({"method": "icarl", "scenario": "domain"}, "icarl cannot serve Domain-IL"),
    ({"method": "ewc", "stream": "task_free"}, "ewc needs context boundaries"),
    ({"learning_rate": -1.0}, "config.learning_rate must be a positive number, got -1.0"),
    ({"replay__buffer_size": 0}, "config.replay.buffer_size must be a positive integer, got 0"),
    ({"eval_every": 7}, "config.eval_every (7) must divide config.steps_per_context (200)"),
    ({"model__hidden": (8, "a")}, "config.model.hidden must be a non-empty tuple of positive integers"),
    ({"method": "ewc", "scenario": "class", "sweep__knob": "ewc.lam"},
     "config.ewc.lam: no such field"),
    ({"method": "all", "sweep__knob": "replay.buffer_size", "sweep__points": (10, 20)},
     "a sweep needs one method and one scenario"),
    ({"method": "ewc", "scenario": "class", "sweep__knob": "replay.buffer_size",
      "sweep__points": (10, 20)},
     "replay.buffer_size does not affect ewc in Class-IL; choose from ewc.strength.class_il"),
    ({"method": "er", "scenario": "class", "sweep__knob": "replay.buffer_size",
      "sweep__points": (10.5,)},
     "config.sweep.points: replay.buffer_size must be a positive integer, got 10.5"),
])
def test_bad_config_is_rejected_before_anything_runs(overrides, message):
  with pytest.raises(cli.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
    study.validate(_config(**overrides))


def test_the_grid_keeps_what_fits_each_scenario():
  pairs, kind, dataset = study.validate(_config(method="all", scenario="all"))
  assert (kind, dataset) == ("split", "digits")
  by_scenario = {s: [n for n, t in pairs if t == s] for s in ("task", "domain", "class")}
  assert len(by_scenario["task"]) == 15
  assert {"xdg", "separate_heads", "packnet", "icarl", "generative_classifier"}.isdisjoint(
      by_scenario["domain"])
  assert "icarl" in by_scenario["class"] and "separate_heads" not in by_scenario["class"]
  free, _, _ = study.validate(_config(method="all", scenario="class",
                                               stream="task_free"))
  assert study.validate(_config(method="xdg"))[0] == [("xdg", "task")]
  assert {n for n, _ in free} == {"finetune", "joint", "er", "derpp", "agem",
                                  "generative_classifier"}


def test_hyperparameter_table_matches_the_registry():
  from cl_methods import registry
  assert set(study.HPARAM_PATHS) == set(registry.METHOD_NAMES)
  for name, entry in registry.ENTRIES.items():
    assert set(study.HPARAM_PATHS[name]) == set(entry.hparams), name


def _cli(*args, workdir):
  return subprocess.run(
      [sys.executable, "-m", "experiments.continual",
       "--config=experiments/configs/continual.py", f"--workdir={workdir}", *args],
      cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_bad_input_is_one_line_with_exit_code_2(tmp_path):
  out = _cli("--config.method=separate_heads", "--config.scenario=class", workdir=tmp_path)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert lines == ["error: config.method: separate_heads cannot serve Class-IL: it needs the "
                   "context identity at test time to choose its head, and Class-IL does not "
                   "give it"]
  assert not os.listdir(tmp_path)


def test_cli_single_run_writes_results_and_plots(tmp_path):
  out = _cli("--config.method=lwf", "--config.scenario=task", "--config.compare_interleaved=false",
             *TINY, workdir=tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  with open(tmp_path / "results.json") as f:
    res = json.load(f)
  for key in ("accuracy_matrix", "acc", "bwt", "fwt", "forgetting", "learning_accuracy",
              "min_acc", "curves", "random_init_accuracy"):
    assert key in res
  assert len(res["accuracy_matrix"]) == 2 and len(res["curves"]["accuracy"]) == 5
  for png in ("accuracy_matrix.png", "accuracy_curves.png"):
    with open(tmp_path / png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _tiny_config(**overrides):
  base = dict(n_contexts=2, steps_per_context=4, eval_every=2, batch_size=8, curve_examples=16,
              model__hidden=(8,))
  base.update(overrides)
  return _config(**base)


def test_grid_writes_a_markdown_table(tmp_path):
  config = _tiny_config(method="all", scenario="class")
  pairs = [("er", "class"), ("joint", "class")]
  contexts = study.load_contexts(config, "split", "digits")
  study.run_grid(config, contexts, pairs, str(tmp_path),
                          "python -m experiments.continual")
  table = (tmp_path / "results.md").read_text()
  assert "| method | family | Class-IL |" in table
  assert "| joint | baseline |" in table and "| er | replay |" in table
  assert table.index("| joint |") < table.index("| er |")
  with open(tmp_path / "class" / "er" / "results.json") as f:
    assert "interleaved_accuracy" in json.load(f)["curves"]
  with open(tmp_path / "grid.json") as f:
    assert [r["method"] for r in json.load(f)["runs"]] == ["joint", "er"]


def test_sweep_writes_the_plasticity_stability_plot(tmp_path):
  config = _tiny_config(method="er", scenario="class", sweep__knob="replay.buffer_size",
                        sweep__points=(4, 32))
  pairs, kind, dataset = study.validate(config)
  contexts = study.load_contexts(config, kind, dataset)
  study.run_sweep(config, contexts, *pairs[0], str(tmp_path))
  with open(tmp_path / "sweep.json") as f:
    sweep = json.load(f)
  assert [r["value"] for r in sweep["runs"]] == [4, 32]
  assert (tmp_path / "plasticity_stability.png").stat().st_size > 0
  assert (tmp_path / "sweep" / "32" / "results.json").exists()


def test_context_count_that_does_not_split_the_classes():
  config = _config(n_contexts=3)
  pairs, kind, dataset = study.validate(config)
  with pytest.raises(cli.UsageError, match="config.n_contexts: 10 classes of digits cannot be "
                                           "split evenly into 3 contexts"):
    study.load_contexts(config, kind, dataset)
