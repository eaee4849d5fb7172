"""runtime.loop: phases in order with their schedules, evaluation after each phase, and a
crash in the middle of a later phase resumed to the uninterrupted run's result, bit for bit."""
import json

import chex
import jax
import numpy as np
import optax
import pytest

from runtime import loop, text_data, training
from tests.helpers import tiny_config

TOKENS = (np.arange(40_000) * 7919 % 251).astype(np.uint8)
CRASH = {"at": None}  # a batch index that raises, to kill a run in the middle of phase b


def _phases(config):
  def data(seed):
    ds = text_data.lm_dataset(TOKENS, seq_len=config.seq_len, batch_size=config.batch_size,
                              seed=seed, shuffle=True, repeat=True)
    return ds

  def crash_at(batch, count=[0]):
    count[0] += 1
    if CRASH["at"] is not None and count[0] >= CRASH["at"]:
      raise RuntimeError("simulated crash")
    return batch

  return [loop.Phase("a", data(1), 4),
          loop.Phase("b", data(2).map(crash_at), 4, learning_rate=optax.constant_schedule(1e-3))]


def _evaluate(params):
  return dict(norm=float(optax.tree.norm(params)))


def _config():
  return tiny_config(steps=8, checkpoint_every=3, log_every=1, async_checkpoints=False,
                     keep_checkpoints=10)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("whole")
  config = _config()
  state, results = loop.train(training.prepare(config), _phases(config), workdir,
                              evaluate=_evaluate)
  return workdir, jax.device_get(state), results


def test_phases_run_in_order_with_their_schedules(whole):
  workdir, state, results = whole
  assert int(state["step"]) == 8 and set(results) == {"a", "b"}
  assert json.loads((workdir / "b.json").read_text()) == results["b"]
  assert results["a"]["steps"] == 4 and results["b"]["nonfinite_steps"] == 0
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, 9))
  config = _config()
  warmup_cosine = training.learning_rate_schedule(config)
  for r in rows:  # the logged rate is the one step r["step"] - 1 used
    expected = warmup_cosine(r["step"] - 1) if r["step"] <= 4 else 1e-3
    assert r["learning_rate"] == pytest.approx(float(expected), rel=1e-6), r
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [3, 4, 6, 8]


def test_a_crash_in_the_second_phase_resumes_to_the_same_result(whole, tmp_path):
  _, state, results = whole
  config = _config()
  run = training.prepare(config)
  CRASH["at"] = 3  # the 3rd batch of phase b: step 7, after the checkpoint at step 6
  try:
    with pytest.raises(RuntimeError, match="simulated crash"):
      loop.train(run, _phases(config), tmp_path, evaluate=_evaluate)
  finally:
    CRASH["at"] = None
  assert (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()
  resumed, resumed_results = loop.train(run, _phases(config), tmp_path, evaluate=_evaluate)
  chex.assert_trees_all_equal(jax.device_get(resumed), state)
  assert resumed_results["b"]["norm"] == results["b"]["norm"]
  assert resumed_results["a"] == json.loads((tmp_path / "a.json").read_text())
  rows = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows == list(range(1, 9))


def test_phases_must_add_up_to_the_configured_steps(tmp_path):
  config = _config()
  with pytest.raises(ValueError, match="add up to 8, config.steps is 9"):
    config.steps = 9
    loop.train(training.prepare(config), _phases(_config()), tmp_path)


def test_one_trainer_serves_every_seed():
  config = tiny_config()
  run = training.prepare(config)
  trainer = loop.Trainer(run)
  with jax.set_mesh(run.mesh):
    seeded = training.initial_state(run, trainer.tx, trainer.shardings)
    default, zero, one = trainer.initial_state(), trainer.initial_state(0), trainer.initial_state(1)
  chex.assert_trees_all_equal(default, seeded)
  chex.assert_trees_all_equal(zero, seeded)
  assert not any(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(one["params"]["embed"]),
                                                      jax.tree.leaves(zero["params"]["embed"])))
  other = training.prepare(tiny_config(seed=1))
  with jax.set_mesh(other.mesh):
    expected = training.initial_state(other, trainer.tx, trainer.shardings)
  chex.assert_trees_all_equal(one, expected)


def test_a_weighted_batch_scores_the_weighted_targets_only():
  """(tokens, weights) batches: the step's loss is sum(w * ce) / sum(w); plain token batches
  keep the mean over every target."""
  config = tiny_config()
  run = training.prepare(config)
  trainer = loop.Trainer(run)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (config.batch_size, config.seq_len + 1), dtype=np.int32)
  weights = np.zeros((config.batch_size, config.seq_len), np.float32)
  weights[:, -4:] = 1.0
  with jax.set_mesh(run.mesh):
    params = trainer.initial_state()["params"]
    logits = np.asarray(run.apply(params, training.global_batch(run, tokens[:, :-1])))
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))
    expected = float((ce * weights).sum() / weights.sum())
    _, weighted = trainer.step(trainer.initial_state(),
                               training.global_batch(run, (tokens, weights)))
    _, plain = trainer.step(trainer.initial_state(), training.global_batch(run, tokens))
  np.testing.assert_allclose(float(weighted["loss"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(plain["loss"]), ce.mean(), rtol=1e-5)
