"""Kills `experiments.pretrain` at random moments and checks that its reruns resume exactly
(the library of `python -m experiments.crash_check`, which describes the schedule)."""
import dataclasses
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from runtime.workdir import write_json

_STEP_LINE = re.compile(r"step (\d+)/\d+ loss")
_RESUMED_LINE = re.compile(r"resumed from .* at step (\d+)")


@dataclasses.dataclass
class Kill:
  moment: str  # "during a save" or "after step N"
  last_logged_step: int  # the last step the killed run logged (log_every is forced to 1)
  resumed_at: int | None = None  # the step the next run resumed from

  @property
  def redone(self) -> int | None:
    return None if self.resumed_at is None else self.last_logged_step - self.resumed_at


def pretrain_command(config_flags: list[str], workdir: Path) -> list[str]:
  return [sys.executable, "-m", "experiments.pretrain", *config_flags, "--config.log_every=1",
          f"--workdir={workdir}"]


def _start(command: list[str], log: Path) -> subprocess.Popen:
  with open(log, "w") as f:
    return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)


def _logged_steps(log: Path) -> list[int]:
  return [int(m) for m in _STEP_LINE.findall(log.read_text())]


def _saving(checkpoints: Path) -> bool:
  return checkpoints.exists() and any("tmp" in p.name for p in checkpoints.iterdir())


def run_kills(config_flags: list[str], workdir: Path, kills: int, seed: int, steps: int,
              checkpoint_every: int, async_saves: bool) -> dict:
  """Runs the schedule described in the module docstring; returns the report."""
  workdir.mkdir(parents=True, exist_ok=True)
  reference, killed = workdir / "reference", workdir / "killed"
  _run_to_end(pretrain_command(config_flags, reference), workdir / "reference.log")
  perf = [json.loads(l) for l in (reference / "perf.jsonl").read_text().splitlines()]
  step_seconds = 1 / np.median([p["steps_per_sec"] for p in perf])
  rng = random.Random(seed)
  history = []
  for i in range(kills):
    log = workdir / f"killed_{i}.log"
    proc = _start(pretrain_command(config_flags, killed), log)
    if i == 0:
      while not _saving(killed / "checkpoints") and proc.poll() is None:
        time.sleep(0.001)
      moment = "during a save"
    else:  # a random step of what is left to train, then a random fraction of a step
      while not _logged_steps(log) and proc.poll() is None:
        time.sleep(0.005)
      target = rng.randint(_logged_steps(log)[0], steps - 1) if _logged_steps(log) else 0
      while (max(_logged_steps(log), default=0) < target) and proc.poll() is None:
        time.sleep(0.005)
      time.sleep(rng.uniform(0, step_seconds))
      moment = f"after step {target}"
    if proc.poll() is not None:
      raise RuntimeError(f"the run ended before kill {i} ({moment}); see {log}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = _logged_steps(log)
    history.append(Kill(moment, logged[-1] if logged else 0))
    if i > 0:
      history[i - 1].resumed_at = _resumed_at(log)
    logging.info("kill %d %s: last logged step %d", i, moment, history[-1].last_logged_step)
  final_log = workdir / "final.log"
  _run_to_end(pretrain_command(config_flags, killed), final_log)
  if history:
    history[-1].resumed_at = _resumed_at(final_log)

  report = dict(
      kills=[dict(dataclasses.asdict(k), redone=k.redone) for k in history],
      checkpoint_every=checkpoint_every,
      max_redone=max((k.redone for k in history), default=0),
      params_equal=_params_equal(reference, killed, steps),
      metrics_equal=(reference / "metrics.jsonl").read_text() == (killed / "metrics.jsonl").read_text())
  report["redone_bound"] = checkpoint_every if not async_saves else 2 * checkpoint_every - 1
  report["ok"] = (report["params_equal"] and report["metrics_equal"]
                  and report["max_redone"] <= report["redone_bound"])
  write_json(workdir / "crash_check.json", report)
  return report


def _run_to_end(command, log: Path) -> None:
  proc = _start(command, log)
  if proc.wait() != 0:
    raise RuntimeError(f"{' '.join(command)} failed; see {log}")


def _resumed_at(log: Path) -> int:
  """The step a run resumed from (0 when it found no checkpoint and started afresh)."""
  found = _RESUMED_LINE.findall(log.read_text())
  return int(found[0]) if found else 0


def _params_equal(a: Path, b: Path, step: int) -> bool:
  load = lambda d: jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(
      d / "checkpoints" / str(step) / "params"))
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, load(a), load(b))))
