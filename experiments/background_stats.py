"""Computes the background slot statistics of a memory-layer run (Sparse Memory Finetuning).

  python -m experiments.background_stats --workdir=DIR [--batches=B]

Runs the frozen model of DIR's latest checkpoint on B batches of its pretraining distribution
and saves df(i) = number of batches that read slot i as the orbax item DIR/background_stats/
(see `experiments.background_statistics`).
"""
from absl import flags

from runtime import slot_statistics
from experiments import cli

BATCHES = flags.DEFINE_integer("batches", None, "Background batches |B| (default: the config's "
                               "background_batches, else 100).")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a memory-layer pretraining run.")


def main(argv):
  cli.check_arguments(argv, workdir=WORKDIR)
  slot_statistics.compute(WORKDIR.value, BATCHES.value)


if __name__ == "__main__":
  cli.run(main)
