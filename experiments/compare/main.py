r"""HOPE against Titans and the Transformer at matched parameters and token budgets.

  python -m experiments.compare --config=experiments/configs/compare.py --workdir=DIR

Arms (config.arms): Transformer, sliding-window Transformer, Titans LMM / MAC / MAG, HOPE,
HOPE-Attention. Studies (config.studies), each over config.seeds seeds: recall (multi-query
associative recall, a learning-rate sweep, accuracy at 1x to 16x the training length),
repeat (a passage read again after filler longer than the attention window), ablation
(HOPE's parts on language modelling). The parameter counts are printed first; results go to
DIR/results.json, DIR/results.md and DIR/*.png, each run to DIR/<study>/<arm>/... (a rerun
skips finished runs and resumes the others from their checkpoints).

The work is done by `experiments/compare/study.py`; bad input is one line on stderr and
exit status 2 before anything is compiled (see experiments/cli.py).
"""
import sys

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments.compare import study

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to experiments/configs/compare.py[:cpu|340m|760m|1.3b].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for results, plots and checkpoints.")


def main(argv):
  cli.check_arguments(argv, config=_CONFIG, workdir=_WORKDIR,
                      example="experiments/configs/compare.py")
  command = "python -m experiments.compare " + " ".join(
      a for a in sys.argv[1:] if not a.startswith("--workdir"))
  study.run(_CONFIG.value, _WORKDIR.value, command)


if __name__ == "__main__":
  cli.run(main)
