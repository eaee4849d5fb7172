"""`python -m experiments.continual_lm` end to end at a tiny size: the cells' loss matrices and
metrics, the grid's summary and plots, and a rerun that skips the finished cells."""
import json

import numpy as np
import pytest

from cl_methods import metrics
from tests.helpers import run_cli

MODULE = "experiments.continual_lm"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
  folder = tmp_path_factory.mktemp("continual_lm")
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "epsilon"]
  (folder / "prose.txt").write_text(" ".join(rng.choice(words, 4000)))
  (folder / "digits.txt").write_text("".join(map(str, rng.integers(0, 10, 20_000))))
  args = ["--config=experiments/configs/continual_lm.py", f"--workdir={folder / 'run'}",
          f"--config.domains={folder / 'prose.txt'},{folder / 'digits.txt'}",
          "--config.architectures=transformer", "--config.methods=finetune,er",
          "--config.seeds=(0,)", "--config.headline.architectures=transformer",
          "--config.headline.methods=finetune", "--config.headline.seeds=(0,1)",
          "--config.model_overrides.dim=32", "--config.model_overrides.num_layers=1",
          "--config.model_overrides.mlp_dim=64", "--config.steps_per_domain=4",
          "--config.eval_every=2", "--config.checkpoint_every=2", "--config.seq_len=32",
          "--config.validation_sequences=4", "--config.curve_sequences=2",
          "--config.consolidation_sequences=4", "--config.replay.buffer_size=8",
          "--config.warmup_steps=1"]
  first = run_cli(MODULE, *args, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  second = run_cli(MODULE, *args, timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  return folder / "run", first, second


def test_every_cell_has_its_loss_matrix_and_metrics(grid):
  run, _, _ = grid
  cells = [("finetune", 0), ("er", 0), ("finetune", 1)]
  for method, seed in cells:
    cell = json.loads((run / "transformer" / method / f"seed{seed}" / "cell.json").read_text())
    matrix = np.array(cell["loss_matrix"])
    assert matrix.shape == (2, 2) and np.all(np.isfinite(matrix))
    assert matrix[0, 0] < cell["initial_losses"][0]  # the first domain was learned
    assert cell["bwt"] == pytest.approx(
        metrics.loss_summary(matrix, cell["initial_losses"])["bwt"])
    assert [p["step"] for p in cell["curves"]] == [2, 4, 6, 8]
  summary = json.loads((run / "grid.json").read_text())
  assert summary["cells"] == summary["of"] == 3
  finetune = next(r for r in summary["rows"] if r["method"] == "finetune")
  assert finetune["seeds"] == [0, 1] and len(finetune["forgetting"]["values"]) == 2
  table = (run / "results.md").read_text()
  assert "| transformer | finetune | 2 |" in table and "| transformer | er | 1 |" in table
  for plot in ("loss_matrix_transformer_finetune.png", "loss_matrix_transformer_er.png",
               "forgetting.png", "bwt.png", "curves_transformer.png"):
    assert (run / "plots" / plot).stat().st_size > 1000, plot


def test_a_rerun_skips_the_finished_cells(grid):
  run, first, second = grid
  trained = "transformer/finetune/seed0: avg loss"
  assert trained in first.stderr and trained not in second.stderr
  assert json.loads((run / "grid.json").read_text())["cells"] == 3


def test_a_task_free_stream_runs_without_boundaries(tmp_path):
  rng = np.random.default_rng(1)
  (tmp_path / "a.txt").write_text(" ".join(rng.choice(["one", "two", "three"], 3000)))
  (tmp_path / "b.txt").write_text("".join(map(str, rng.integers(0, 10, 15_000))))
  result = run_cli(MODULE, "--config=experiments/configs/continual_lm.py",
                   f"--workdir={tmp_path / 'run'}", "--config.stream=task_free",
                   f"--config.domains={tmp_path / 'a.txt'},{tmp_path / 'b.txt'}",
                   "--config.architectures=transformer", "--config.methods=finetune",
                   "--config.memory_methods=", "--config.headline.architectures=transformer",
                   "--config.headline.methods=finetune", "--config.headline.seeds=(0,)",
                   "--config.model_overrides.dim=32", "--config.model_overrides.num_layers=1",
                   "--config.model_overrides.mlp_dim=64", "--config.steps_per_domain=4",
                   "--config.eval_every=2", "--config.seq_len=32", "--config.validation_sequences=4",
                   "--config.curve_sequences=2", "--config.warmup_steps=1", timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  cell = json.loads((tmp_path / "run/transformer/finetune/seed0/cell.json").read_text())
  assert np.array(cell["loss_matrix"]).shape == (2, 2)
  assert cell["study_config"]["stream"] == "task_free"
