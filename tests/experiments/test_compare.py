"""experiments.compare: the recall and repeated-passage generators, the checks before any
compile, and one small end-to-end run of every study."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
import pytest

from experiments.compare import repeat_study, report, runs, study
from runtime import performance, recall, repeat, training, workdir
from runtime.errors import UsageError
from experiments.configs import compare, compare_memory_write
from tests.helpers import ROOT, override


def test_recall_answers_are_the_values_bound_to_the_queried_keys():
  for index in range(20):
    tokens, mask = recall.sequence(3, index, 96, 8)
    assert tokens.shape == (97,) and mask.shape == (96,) and mask.sum() == 8
    bound = dict(zip(tokens[0:16:2].tolist(), tokens[1:16:2].tolist()))
    assert len(bound) == 8 and all(k in recall.KEYS for k in bound)
    assert all(v in recall.VALUES for v in bound.values())
    assert all(t in recall.FILLER for t in tokens[16:97 - 16])
    queried, answers = tokens[:-1][mask], tokens[1:][mask]
    assert sorted(queried.tolist()) == sorted(bound)
    assert [bound[k] for k in queried.tolist()] == answers.tolist()
  again, _ = recall.sequence(3, 5, 96, 8)
  np.testing.assert_array_equal(again, recall.sequence(3, 5, 96, 8)[0])
  with pytest.raises(UsageError, match="num_pairs"):
    recall.check(256, 65)
  with pytest.raises(UsageError, match="cannot hold"):
    recall.check(16, 8)


def test_accuracy_scores_only_the_queried_values():
  tokens, mask = recall.sequence(0, 0, 32, 4)
  logits = np.zeros((1, 32, 256))
  logits[0, np.arange(32), tokens[1:]] = 1.0  # perfect everywhere
  assert recall.accuracy(logits, tokens[None], mask) == 1.0
  logits[0, np.flatnonzero(mask)[0]] = 0.0
  logits[0, np.flatnonzero(mask)[0], 0] = 1.0
  assert recall.accuracy(logits, tokens[None], mask) == 0.75


def test_recall_mixture_cycles_through_the_settings():
  batches = iter(recall.mixture(seed=0, settings=[(16, 2), (32, 4)], batch_size=3))
  shapes = [next(batches).shape for _ in range(4)]
  assert shapes == [(3, 17), (3, 33), (3, 17), (3, 33)]
  first = next(iter(recall.mixture(seed=0, settings=[(16, 2)], batch_size=3)))
  np.testing.assert_array_equal(first[0], recall.sequence(0, 0, 16, 2)[0])
  tokens, weights = next(iter(recall.mixture(seed=0, settings=[(16, 2)], batch_size=3,
                                             answers_only=True)))
  np.testing.assert_array_equal(tokens, first)
  tokens, mask = recall.sequence(0, 0, 16, 2)
  np.testing.assert_array_equal(weights, np.broadcast_to(mask, (3, 16)).astype(np.float32))


def test_repeated_passage_is_the_passage_twice_around_filler():
  tokens = np.arange(10_000, dtype=np.uint8)
  seq = repeat.sequence(tokens, 1, 7, passage=16, distance=40)
  assert seq.shape == (2 * 16 + 40 + 1,) and seq.dtype == np.int32
  np.testing.assert_array_equal(seq[:16], seq[56:72])
  assert not np.array_equal(seq[16:32], seq[:16])  # the filler is from elsewhere
  np.testing.assert_array_equal(seq, repeat.sequence(tokens, 1, 7, passage=16, distance=40))
  batch = next(iter(repeat.dataset(tokens, seed=1, passage=16, distance=40, batch_size=3)))
  assert batch.shape == (3, 73)
  with pytest.raises(UsageError, match="config.repeat: the corpus holds"):
    repeat.check(tokens[:100], 16, 40, "config.repeat")
  with pytest.raises(UsageError, match="config.repeat.passage"):
    repeat.check(tokens, 1, 40, "config.repeat")


def test_reading_losses_compare_the_two_readings_of_the_passage():
  passage, distance = 4, 6
  loss = np.full((2, 2 * passage + distance), 9.0)
  loss[:, 0:passage - 1] = 3.0               # predicting P[1:] the first time
  loss[:, passage + distance:passage + distance + passage - 1] = 1.0  # ... the second time
  assert repeat.reading_losses(loss, passage, distance) == dict(first=3.0, second=1.0, gain=2.0)


def _micro(**overrides):
  """The default config at the smallest sizes: width 16, one layer, a few steps."""
  c = compare.get_config()
  c.arms = "transformer,transformer_swa"
  c.seeds = 2
  c.workers = 1
  c.model.update(dim=16, num_layers=1, num_heads=2)
  c.train.update(batch_size=4, seq_len=32, warmup_steps=1, log_every=2, checkpoint_every=3)
  c.recall.update(lengths=(16, 32), pairs=(2, 2), steps=2, learning_rates=(1e-3, 1e-2),
                  multipliers=(1, 2), eval_sequences=8, eval_batch_size=4)
  c.repeat.update(passage=8, distance=40, steps=2, eval_distances=(40, 80), eval_sequences=4,
                  eval_batch_size=4)
  c.ablation.update(steps=2, eval_batches=1, variants="transformer,transformer_swa")
  override(c, overrides)
  return c


@pytest.mark.parametrize("overrides, message", [
    ({"arms": "transformer,gpt5"}, "config.arms: unknown name"),
    ({"studies": "recall,vibes"}, "config.studies: unknown name"),
    ({"ablation.variants": "hope,hope_without_magic"}, "config.ablation.variants: unknown name"),
    ({"seeds": 0}, "config.seeds must be a positive integer"),
    ({"workers": -1}, "config.workers must be"),
    ({"workers": 4096}, "config.workers (4096) is more than the"),
    ({"repeat.distance": 32, "repeat.eval_distances": (32,)},
     "config.repeat.distance (32) must be larger than every arm's attention window"),
    ({"repeat.eval_distances": (20, 80)}, "must be at least the training distance"),
    ({"recall.pairs": (2, 4, 4)}, "one entry per setting"),
    ({"recall.lengths": (4, 32)}, "cannot hold 2 pairs"),
    ({"recall.learning_rates": (1e-3, 0.0)}, "config.recall.learning_rates must be"),
    ({"train.weight_decay": -0.1}, "config.train.weight_decay must be"),
    ({"arms": "transformer,titans_mac", "arm_models.titans_mac.model.mlp_dim": 512},
     "parameter counts differ"),
])
def test_bad_input_is_refused_before_any_compile(overrides, message):
  with pytest.raises(UsageError, match=re.escape(message)):
    study.validate(_micro(**overrides))


def test_default_config_validates_with_every_arm_and_variant_matched():
  models, studies = study.validate(compare.get_config())
  assert studies == ["recall", "repeat", "ablation"]
  assert set(models) == set(compare.ARM_CONFIGS) | set(compare.ABLATIONS)
  counts = [models[a].params for a in compare.ARM_CONFIGS]
  assert max(counts) / min(counts) - 1 < 0.01
  hope = models["hope"].run.config.model
  assert models["hope_gd"].run.config.model.inner_rule == "gd" and hope.inner_rule == "dgd"
  assert models["hope_cms_teach"].run.config.model.cms_signal == "teach"


def test_memory_write_config_runs_the_repeat_study_on_lmm_at_higher_rates_and_looser_clips():
  models, studies = study.validate(compare_memory_write.get_config())
  assert studies == ["repeat"]
  write = {arm: (m.run.config.model.max_lr, m.run.config.model.max_grad_norm)
           for arm, m in models.items()}
  assert write == {"titans_lmm": (0.01, 1.0), "titans_lmm_max_lr_3x": (0.03, 1.0),
                   "titans_lmm_max_lr_10x": (0.1, 1.0), "titans_lmm_clip_10x": (0.01, 10.0),
                   "titans_lmm_max_lr_10x_clip_10x": (0.1, 10.0)}
  assert len({m.params for m in models.values()}) == 1


def test_end_to_end_writes_results_and_a_rerun_skips_finished_runs(tmp_path, capsys):
  config = _micro()
  results = study.run(config, str(tmp_path), "test")
  printed = capsys.readouterr().out
  assert "| transformer | transformer |" in printed and "Recall accuracy" in printed
  assert "an end of the sweep" not in printed        # two rates: both are ends
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["machine"] == f"{performance.machine()}, jax {jax.__version__}"
  rec = saved["studies"]["recall"]["arms"]["transformer"]
  assert set(rec["sweep"]) == {"0.001", "0.01"} and set(rec["sweep"]["0.01"]) == {"16x2", "32x2"}
  assert len(rec["accuracy"]["32x2"]["2"]["values"]) == 2 and set(rec["accuracy"]["16x2"]) == {"1", "2"}
  # seed 0 at both rates, then seed 1 at the best one only
  folder = tmp_path / "recall" / "transformer"
  runs = sorted(p.parent.relative_to(folder).as_posix() for p in folder.rglob("recall.json"))
  assert runs == sorted(["lr0.001/seed0", "lr0.01/seed0", f"lr{rec['learning_rate']:g}/seed1"])
  reading = saved["studies"]["repeat"]["arms"]["transformer_swa"]["readings"]["80"]
  assert reading["gain"]["mean"] == pytest.approx(
      reading["first"]["mean"] - reading["second"]["mean"])
  assert len(saved["studies"]["repeat"]["arms"]["transformer"]["by_position"]) == 2 * 8 + 40
  window = saved["studies"]["repeat"]["arms"]["transformer_swa"]["readback"]
  for distance in ("40", "80"):            # it cannot see the first reading
    np.testing.assert_allclose(window[distance]["readback"]["values"], 0, atol=1e-6)
  assert "| readback @40 | readback @80 |" in printed
  variants = saved["studies"]["ablation"]["variants"]
  assert variants["transformer"]["paired"]["values"] == [0.0, 0.0]
  np.testing.assert_allclose(variants["transformer_swa"]["paired"]["values"], np.subtract(
      variants["transformer_swa"]["loss"]["values"], variants["transformer"]["loss"]["values"]))
  assert "| transformer_swa | " in printed and "minus transformer |" in printed
  for png in ("recall.png", "repeat_gain.png", "repeat_readback.png", "repeat_by_position.png",
              "ablation.png"):
    assert (tmp_path / png).stat().st_size > 1000
  one = tmp_path / "repeat" / "transformer" / "seed1" / "repeat.json"
  first = one.stat().st_mtime_ns
  again = study.run(config, str(tmp_path), "test")
  assert one.stat().st_mtime_ns == first
  assert again["studies"]["repeat"] == results["studies"]["repeat"]
  # a crash after the loop scored a run but before its settings were recorded: completed
  scored = json.loads(one.read_text())
  one.write_text(json.dumps({k: v for k, v in scored.items()
                             if k not in ("config", "study_config")}))
  study.run(_micro(studies="repeat"), str(tmp_path), "test")
  assert json.loads(one.read_text()) == scored
  # refused before anything trains, though recall (first) would train a new rate
  with pytest.raises(UsageError, match=r"repeat.json was trained with other settings \(steps\)"):
    study.run(_micro(**{"repeat.steps": 3, "recall.learning_rates": (1e-3, 1e-2, 3e-2)}),
              str(tmp_path), "test")
  assert not (folder / "lr0.03").exists()
  # so is one whose data or scoring changed, which the run configs do not record
  for changed, field in (({"recall.pairs": (2, 3)}, "recall.pairs"),
                         ({"ablation.source": "c_headers"}, "ablation.source")):
    with pytest.raises(UsageError, match=rf"with other settings \({field}\)"):
      study.run(_micro(**changed), str(tmp_path), "test")


def test_sweep_edges_are_the_arms_whose_best_rate_ends_a_sweep_of_three_or_more():
  sweep = {"0.0003": {}, "0.001": {}, "0.01": {}}
  arms = dict(low=dict(learning_rate=3e-4, sweep=sweep),
              mid=dict(learning_rate=1e-3, sweep=sweep),
              high=dict(learning_rate=1e-2, sweep=sweep),
              two=dict(learning_rate=1e-3, sweep={"0.001": {}, "0.01": {}}))
  assert report.sweep_edges(arms) == {"low": "lowest", "high": "highest"}


def _where_it_ran(config, label):
  return (label, config.workers, os.getpid(), sorted(os.sched_getaffinity(0)),
          jax.config.jax_compilation_cache_dir)


def _run_all(config, jobs: list[tuple], costs=None, cache=None) -> list:
  """[fn(config, *args) for fn, *args in jobs] by `runs.Workers`, with the given costs."""
  workers = runs.Workers(config, cache=cache)
  queued = [workers.submit(fn, *args, cost=cost)
            for (fn, *args), cost in zip(jobs, costs or [0.0] * len(jobs))]
  workers.run()
  return [job.result for job in queued]


@pytest.mark.skipif(len(runs.usable_cores()) < 2, reason="needs two CPU cores")
def test_workers_are_processes_pinned_to_their_own_cores_with_the_compile_cache(tmp_path):
  config = _micro(workers=2)
  done = _run_all(config, [(_where_it_ran, name) for name in "abcd"], cache=tmp_path)
  assert [d[:2] for d in done] == [(name, 2) for name in "abcd"]
  assert {d[4] for d in done} == {str(tmp_path)}
  pinned = {pid: tuple(cores) for _, _, pid, cores, _ in done}
  assert os.getpid() not in pinned
  # each worker has its own half of the cores (one worker may have taken every job)
  halves = {tuple(int(c) for c in h) for h in np.array_split(runs.usable_cores(), 2)}
  assert set(pinned.values()) <= halves and len(set(pinned.values())) == len(pinned)
  # one worker: in this process
  assert _run_all(_micro(), [(_where_it_ran, "a")])[0][2] == os.getpid()


def _label(config, label):
  return label


def test_workers_run_the_costliest_job_first_and_queue_what_a_finished_job_asks_for():
  workers, order = runs.Workers(_micro()), []

  def ran(job):
    order.append(job.result)
    if job.result == "b":  # queued after a, which costs more, but runs before it
      workers.submit(_label, "after b", cost=5.0, then=ran)

  for label, cost in (("a", 1.0), ("b", 3.0), ("c", 2.0), ("d", 2.0)):
    workers.submit(_label, label, cost=cost, then=ran)
  workers.run()
  assert order == ["b", "after b", "c", "d", "a"]
  assert workers.cost("hope", ml_collections.ConfigDict(dict(
      steps=10, batch_size=2, seq_len=8))) == 160.0   # no FLOPs given: one per token
  assert runs.Workers(_micro(), {"hope": 3.0}).cost("hope", ml_collections.ConfigDict(dict(
      steps=10, batch_size=2, seq_len=8))) == 480.0


def test_a_job_drops_the_compiled_programs_once_they_hold_half_the_memory_maps(monkeypatch):
  used_limit = runs.memory_maps()
  if Path("/proc/self/maps").exists():
    assert 0 < used_limit[0] < used_limit[1]
  for used, kept in ((100, True), (40_000, False)):
    runs._JITTED["probe"] = jax.jit(lambda x: x + 1)
    monkeypatch.setattr(runs, "memory_maps", lambda used=used: (used, 65_530))
    assert runs._call((_label, _micro(), ("a",))) == "a"
    assert ("probe" in runs._JITTED) == kept


def _report_pid(folder, name):
  """Writes this process's id to `folder/name.pid` atomically: a worker killed mid-write
  leaves no file rather than an empty one."""
  workdir.write_json(Path(folder, f"{name}.pid"), os.getpid())


def _report_and_wait(config, folder, name):
  _report_pid(folder, name)
  time.sleep(600)


def _running(pid: int) -> bool:
  """Whether process `pid` exists and is not a zombie (from Linux's /proc)."""
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def _wait_until(condition, seconds: float) -> bool:
  deadline = time.monotonic() + seconds
  while not condition() and time.monotonic() < deadline:
    time.sleep(0.1)
  return condition()


@pytest.mark.skipif(len(runs.usable_cores()) < 2 or not Path("/proc/self/stat").exists(),
                    reason="needs two CPU cores and Linux's /proc")
def test_workers_end_when_the_command_that_started_them_is_killed(tmp_path):
  command = subprocess.Popen([sys.executable, "-c", (
      "from experiments.compare import runs; from tests.experiments import test_compare as t; "
      f"t._run_all(t._micro(workers=2), [(t._report_and_wait, {str(tmp_path)!r}, n) "
      "for n in 'ab'])")], cwd=ROOT)
  pid_files = [tmp_path / "a.pid", tmp_path / "b.pid"]
  workers = []
  try:
    assert _wait_until(lambda: all(f.exists() for f in pid_files), 120)
    workers = [int(f.read_text()) for f in pid_files]
    assert all(map(_running, workers))
    command.kill()
    command.wait()
    assert _wait_until(lambda: not any(map(_running, workers)), 10)
  finally:
    command.kill()
    for pid in filter(_running, workers):
      os.kill(pid, signal.SIGKILL)


def _fail_after_report(config, folder, name):
  _report_pid(folder, name)
  raise ValueError(f"job {name} failed")


@pytest.mark.skipif(len(runs.usable_cores()) < 2 or not Path("/proc/self/stat").exists(),
                    reason="needs two CPU cores and Linux's /proc")
def test_the_first_failing_job_ends_the_others_at_once_and_raises_its_error(tmp_path):
  started = time.monotonic()
  jobs = [(_report_and_wait, str(tmp_path), "a"), (_fail_after_report, str(tmp_path), "b"),
          (_report_and_wait, str(tmp_path), "c")]
  with pytest.raises(ValueError, match="job b failed"):
    _run_all(_micro(workers=2), jobs, costs=[3.0, 2.0, 1.0])
  assert time.monotonic() - started < 120   # not the 600 s that job a sleeps
  # job a's worker is gone, and so is job c's if b's worker took c before it was killed
  for name in "ac":
    pid_file = tmp_path / f"{name}.pid"
    assert not (pid_file.exists() and _running(int(pid_file.read_text())))


@pytest.mark.skipif(len(runs.usable_cores()) < 2, reason="needs two CPU cores")
def test_a_study_trained_by_two_workers_scores_what_one_process_does(tmp_path):
  def first_readings(workers):
    config = _micro(studies="repeat", arms="transformer_swa", workers=workers)
    arms = study.run(config, str(tmp_path / f"workers{workers}"), "test")["studies"]["repeat"]
    return arms["arms"]["transformer_swa"]["readings"]["40"]["first"]["values"]

  here = first_readings(1)
  np.testing.assert_allclose(first_readings(2), here, rtol=1e-5)
  assert len(set(here)) == 2   # the two seeds differ


def _untrained(arm: str, seq_len: int = 24, **model):
  """(run, initial params) of `arm` at width 16, one layer, with `model` overrides."""
  config = _micro(**{"model.dim": 16})
  config.arm_models[arm].model.update(model)
  run = training.prepare(runs.run_config(config, arm, seq_len=seq_len, steps=1, seed=0))
  return run, training.init_state(run, optax.sgd(0.1))["params"]


def test_memory_gates_of_a_titans_memory_and_none_without_one():
  tokens = np.arange(2 * 24, dtype=np.int32).reshape(2, 24)
  for arm, has_memory in (("titans_lmm", True), ("transformer", False)):
    run, params = _untrained(arm)
    gates = repeat_study.memory_gates(run, params, tokens, distance=40)
    if not has_memory:
      assert gates is None
      continue
    assert len(gates) == 1
    g = gates[0]
    assert 0 < g["theta_share"] < 1 and 0 < g["alpha"] < 1 and 0 < g["eta"] < 1
    # at the initial biases alpha is about 0.018: a write keeps (1 - alpha)^40 of itself
    assert g["kept"] == pytest.approx((1 - g["alpha"]) ** 40, rel=0.2)


def test_inner_clips_bind_on_every_token_under_a_tiny_clip_and_on_none_under_a_huge_one():
  tokens = np.random.default_rng(0).integers(0, 256, (2, 24), dtype=np.int32)
  found = {}
  for clip in (1e-6, 1e6):
    run, params = _untrained("titans_lmm", max_grad_norm=clip)
    [found[clip]] = repeat_study.inner_clips(run, params, tokens)
  assert found[1e-6]["clipped"] == 1.0 and found[1e6]["clipped"] == 0.0
  assert found[1e-6]["norm_over_clip"] > 1e3 and found[1e6]["norm_over_clip"] < 1e-3


def test_self_modifying_gates_of_hope_bind_every_clip_under_a_tiny_one_and_none_under_a_huge_one():
  tokens = np.random.default_rng(0).integers(0, 256, (2, 24), dtype=np.int32)
  found = {}
  for clip in (1e-6, 1e6):
    run, params = _untrained("hope", max_grad_norm=clip)
    [found[clip]] = repeat_study.self_modifying_gates(run, params, tokens, distance=40)
    assert repeat_study.memory_gates(run, params, tokens, distance=40) is None
  tiny, huge = found[1e-6], found[1e6]
  assert tiny["clipped"] == [1.0] * 5 and huge["clipped"] == [0.0] * 5
  assert min(tiny["norm_over_clip"]) > 1e3 and max(huge["norm_over_clip"]) < 1e-3
  # at the initial biases eta is about 0.1 and alpha 0.001: a write keeps 0.999^40 of itself
  assert 0.05 < huge["eta"] < 0.2 and 0 < huge["alpha"] < 0.01
  assert huge["kept"] == pytest.approx((1 - huge["alpha"]) ** 40, rel=0.05)


def test_readback_is_zero_for_a_window_short_of_the_first_reading_and_not_for_full_attention():
  pc = _micro().repeat                          # passage 8, filler 40; the window is 32
  tokens = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.int32)
  found = {}
  for arm in ("transformer_swa", "transformer"):
    run, params = _untrained(arm, seq_len=2 * pc.passage + pc.distance)
    by_position = repeat_study.position_losses(run, params, tokens, pc, pc.distance, seed=0)
    found[arm] = repeat_study.readback(run, params, tokens, pc, pc.distance, 0, by_position)
  window, full = found["transformer_swa"], found["transformer"]
  assert window["readback"] == pytest.approx(0, abs=1e-6)
  assert abs(full["readback"]) > 1e-4
  assert full["readback"] == full["second_after_other"] - full["second"]


def test_passage_memory_is_lowest_after_the_passage_itself():
  tokens = np.random.default_rng(0).integers(0, 256, (4, 2 * 8 + 16), dtype=np.int32)
  tokens[:, -8:] = tokens[:, :8]                    # P | F | P
  # Titans at max_lr 0.1: writes strong enough to show at initialisation
  for arm, model in (("titans_lmm", dict(max_lr=0.1)), ("hope", {}), ("transformer", {})):
    run, params = _untrained(arm, seq_len=32, **model)
    found = repeat_study.passage_memory(run, params, tokens, passage=8, distance=16)
    if arm == "transformer":
      assert found is None
      continue
    [layer] = found
    assert layer["after_passage"] < layer["after_other"] < layer["initial"], arm
