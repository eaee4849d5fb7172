"""Crash safety: kills at random moments, corrupt checkpoints, non-finite steps."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments.benchmarks import restarts
from runtime import training
from tests.helpers import TINY_FLAGS, run_cli, tiny_config


def _params(workdir, step):
  params = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "params")
  return jax.tree.map(np.asarray, params)


def test_kills_at_random_moments_resume_exactly(tmp_path):
  """The reduced kill test: two SIGKILLs (one during a save), synchronous saves."""
  flags = [*TINY_FLAGS, "--config.steps=40", "--config.checkpoint_every=10",
           "--config.async_checkpoints=False"]
  report = restarts.run_kills(flags, tmp_path, kills=2, seed=0, steps=40, checkpoint_every=10,
                                 async_saves=False)
  assert report["kills"][0]["moment"] == "during a save"
  assert all(k["resumed_at"] is not None for k in report["kills"])
  assert report["params_equal"] and report["metrics_equal"], report
  assert report["max_redone"] <= 10, report


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """12 steps, checkpoints at 4, 8 and 12, and the step-12 parameters."""
  workdir = tmp_path_factory.mktemp("finished")
  result = run_cli("experiments.pretrain", *TINY_FLAGS, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir, _params(workdir, 12)


def _flip_bytes(step_dir):
  biggest = max((p for p in (step_dir / "params").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  data = bytearray(biggest.read_bytes())
  data[len(data) // 2] ^= 0xFF
  biggest.write_bytes(bytes(data))
  return biggest


def test_corrupt_latest_checkpoint_is_skipped_and_training_redone(finished_run, tmp_path):
  original, final_params = finished_run
  workdir = tmp_path / "run"
  shutil.copytree(original, workdir)
  damaged = _flip_bytes(workdir / "checkpoints" / "12")

  evaluation = run_cli("experiments.evaluate", f"--workdir={workdir}")
  assert evaluation.returncode == 0, evaluation.stderr[-2000:]
  assert "skipping checkpoint step 12: it is corrupt" in evaluation.stderr
  assert str(damaged) in evaluation.stderr
  assert json.loads((workdir / "eval" / "step_8.json").read_text())["step"] == 8
  named = run_cli("experiments.evaluate", f"--workdir={workdir}", "--step=12")
  assert named.returncode == 2 and "--step 12: the checkpoint is corrupt" in named.stderr

  rerun = run_cli("experiments.pretrain", *TINY_FLAGS, f"--workdir={workdir}")
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "checkpoint step 12 in" in rerun.stderr and "does not match its checksum" in rerun.stderr
  assert "at step 8" in rerun.stderr
  [moved] = (workdir / "corrupt_checkpoints").iterdir()  # kept for inspection
  assert moved.name.startswith("12-")
  np.testing.assert_equal(_params(workdir, 12), final_params)


def test_checkpoint_without_checksums_that_fails_to_restore_is_skipped(finished_run, tmp_path):
  original, final_params = finished_run
  workdir = tmp_path / "run"
  shutil.copytree(original, workdir)
  step_dir = workdir / "checkpoints" / "12"
  (step_dir / "sha256sums.json").unlink()
  (step_dir / "params" / "manifest.ocdbt").unlink()

  rerun = run_cli("experiments.pretrain", *TINY_FLAGS, f"--workdir={workdir}")
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "checkpoint step 12 in" in rerun.stderr and "it does not restore" in rerun.stderr
  np.testing.assert_equal(_params(workdir, 12), final_params)


def test_nonfinite_step_stops_the_run_without_saving_it(tmp_path):
  result = run_cli("experiments.pretrain", *TINY_FLAGS, "--config.learning_rate=1e37",
                   "--config.warmup_steps=1", "--config.checkpoint_every=1",
                   f"--workdir={tmp_path}")
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert result.returncode == 3, result.stderr[-2000:]
  assert len(errors) == 1 and "is not finite; stopped" in errors[0], result.stderr[-2000:]
  bad_step = int(errors[0].split("step ")[1].split(":")[0])
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
  assert saved == list(range(1, bad_step)), saved
  for step in saved:
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(tmp_path, step)))
  assert "Traceback" not in result.stderr


def test_guard_keeps_the_state_and_names_the_first_nonfinite_group():
  config = tiny_config()
  run = training.prepare(config)
  names = training.nonfinite_names(run)
  poisoned = "blocks/1/mlp/down/kernel"
  poison = lambda updates: jax.tree_util.tree_map_with_path(
      lambda path, u: u * jnp.inf if "/".join(str(k.key) for k in path) == poisoned else u,
      updates)
  tx = optax.chain(training.optimizer(config, run),
                   optax.stateless(lambda updates, params: poison(updates)))
  shardings = training.state_shardings(run, tx)
  with jax.set_mesh(run.mesh):
    state = training.initial_state(run, tx, shardings)
    before = jax.tree.map(np.asarray, state)
    step = training.make_train_step(run, tx, shardings)
    tokens = training.global_batch(run, np.ones((8, 33), np.int32))
    state, metrics = step(state, tokens)
  assert names[int(metrics["nonfinite"])] == f"parameter {poisoned} after the update"
  assert np.isfinite(metrics["loss"])
  after = jax.tree.map(np.asarray, state)
  np.testing.assert_equal(after["params"], before["params"])
  np.testing.assert_equal(after["opt_state"], before["opt_state"])
  assert int(after["step"]) == 1
