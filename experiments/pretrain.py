"""Pretrains a language model of the zoo on a device mesh.

  python -m experiments.pretrain --config=experiments/configs/transformer.py:tiny --workdir=DIR

Override any config field with --config.FIELD=VALUE. Rerunning the same command resumes from
the workdir's latest checkpoint. Multi-host: add --coordinator_address=HOST:PORT
--num_processes=N --process_id=I on every host.
"""
from absl import flags
from ml_collections import config_flags

from experiments import cli
from runtime import loop

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (FILE.py:SIZE).",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")


def main(argv):
  cli.check_arguments(argv, config=CONFIG, workdir=WORKDIR,
                      example="experiments/configs/transformer.py:tiny")
  cli.initialize_distributed()
  loop.pretrain(CONFIG.value, WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
