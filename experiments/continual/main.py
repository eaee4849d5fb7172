r"""Runs continual-learning methods on a benchmark; writes the accuracy matrix, metrics, plots.

    python -m experiments.continual --config=experiments/configs/continual.py \
        --config.method=ewc --config.scenario=class --config.benchmark=split_digits \
        --workdir=/tmp/ewc

One method on one scenario writes into the workdir:
  results.json         accuracy_matrix, random_init_accuracy, acc, bwt, fwt, forgetting,
                       learning_accuracy, min_acc, curves (steps, accuracy, boundaries and
                       the interleaved run's), the output layout and the config;
  accuracy_matrix.png  heatmap of R[i, j];
  accuracy_curves.png  per-context accuracy over training, sequential beside interleaved.
With `--config.method=all` and/or `--config.scenario=all` (the default scenario) every
method that fits each scenario runs (joint first, so every run's plot shows the
interleaved curves too), each into WORKDIR/<scenario>/<method>/, and the run writes
WORKDIR/results.md (markdown tables) and WORKDIR/grid.json. A sweep
(`--config.sweep.knob=ewc.strength.class_il --config.sweep.points='(1e3,1e6,1e9)'`) runs
one method and scenario once per point into WORKDIR/sweep/<point>/ and writes sweep.json,
sweep.md and plasticity_stability.png.

The work is done by `experiments/continual/study.py`. Bad input: one `error:` line, exit 2.
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments.continual import study

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to experiments/configs/continual.py.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for results.json and the plots.")


def main(argv):
  """Validates the config, loads the data, then runs one method, a grid or a sweep."""
  cli.check_arguments(argv, config=_CONFIG, workdir=_WORKDIR,
                      example="experiments/configs/continual.py")
  config, workdir = _CONFIG.value, _WORKDIR.value
  pairs, kind, dataset = study.validate(config)
  contexts = study.load_contexts(config, kind, dataset)
  os.makedirs(workdir, exist_ok=True)
  command = "python -m experiments.continual " + " ".join(
      a for a in sys.argv[1:] if not a.startswith("--workdir"))
  if config.sweep.knob:
    study.run_sweep(config, contexts, *pairs[0], workdir)
  elif len(pairs) == 1:
    study.run_single(config, contexts, *pairs[0], workdir)
  else:
    study.run_grid(config, contexts, pairs, workdir, command)

if __name__ == "__main__":
  cli.run(main)
