"""The fact-injection study: Sparse Memory Finetuning against full finetuning and LoRA.

  python -m experiments.fact_injection --config=experiments/configs/fact_injection.py --workdir=DIR

Pretrains a memory-layer LM on known facts plus generic text (or loads DIR's finished
pretraining), computes or loads its background slot statistics, streams the new facts with
every method and setting of the config's sweeps, and writes DIR/results.json and
DIR/frontier.png (see `experiments/fact_injection/study.py`). Rerunning resumes an interrupted
pretraining from its last checkpoint.
"""
from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments.fact_injection import study

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")


def main(argv):
  cli.check_arguments(argv, config=CONFIG, workdir=WORKDIR,
                      example="experiments/configs/fact_injection.py")
  study.study(CONFIG.value, WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
