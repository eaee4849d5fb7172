"""Kills `experiments.pretrain` at random moments and checks that reruns resume exactly.

  python -m experiments.crash_check --workdir=DIR --kills=5 --seed=0 \
      --config=experiments/configs/transformer.py:tiny --config.steps=300

Every `--config...` flag is handed to pretrain as given. The script runs the config once
uninterrupted (DIR/reference), then in DIR/killed it starts the same command, SIGKILLs it,
and starts it again, `--kills` times: the first kill lands while a checkpoint save is in
flight (its temporary folder exists), the others at random moments of the run (after a
random step, plus a random fraction of a step). A last rerun finishes. It checks that the
final parameters and metrics.jsonl equal the uninterrupted run's (bitwise) and that no kill
cost more redone steps than the bound: `checkpoint_every` with synchronous saves
(`--config.async_checkpoints=False`), 2 * checkpoint_every - 1 with asynchronous ones
(training goes on while a save is written). Writes DIR/crash_check.json.
"""
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags as ml_config_flags

from experiments import cli
from experiments.benchmarks import restarts

CONFIG = ml_config_flags.DEFINE_config_file("config", None, "Pretraining config (FILE.py:SIZE); "
                                            "it and every --config.FIELD=VALUE go to pretrain.")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the reference and killed runs.")
KILLS = flags.DEFINE_integer("kills", 5, "How many times to SIGKILL the run.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the random kill moments.")


def main(argv):
  cli.check_arguments(argv, workdir=WORKDIR)
  if KILLS.value < 1:
    raise cli.UsageError(f"--kills must be at least 1, got {KILLS.value}")
  cli.check_arguments(argv, config=CONFIG, example="experiments/configs/transformer.py:tiny")
  config_flags = [a for a in sys.argv[1:] if a.startswith("--config")]
  workdir = Path(WORKDIR.value).absolute()
  if workdir.exists() and any(workdir.iterdir()):
    raise cli.UsageError(f"--workdir {str(workdir)!r} is not empty: the test needs fresh runs")
  checkpoint_every = CONFIG.value.checkpoint_every
  report = restarts.run_kills(config_flags, workdir, KILLS.value, SEED.value,
                              CONFIG.value.steps, checkpoint_every,
                              CONFIG.value.async_checkpoints)
  for k in report["kills"]:
    print(f"kill {k['moment']:>15}: last step {k['last_logged_step']}, resumed at "
          f"{k['resumed_at']}, redone {k['redone']}")
  print(f"final parameters equal: {report['params_equal']}; metrics.jsonl equal: "
        f"{report['metrics_equal']}; most steps redone {report['max_redone']} "
        f"(allowed: {report['redone_bound']})")
  if not report["ok"]:
    raise cli.RunStopped(f"the kill test failed; see {workdir / 'crash_check.json'}")


if __name__ == "__main__":
  cli.run(main)
