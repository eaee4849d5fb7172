r"""Continual learning of language models: architectures x methods on a stream of text domains.

    python -m experiments.continual_lm --config=experiments/configs/continual_lm.py \
        --workdir=/tmp/continual_lm

Every cell (architecture, method, seed) trains through the domains on the training runtime
(checkpointed; a rerun resumes the unfinished cell in the middle of its phase and skips the
finished ones) into WORKDIR/<arch>/<method>/seed<k>/ (cell.json: the loss matrix, initial
losses, ACC / BWT / FWT / forgetting on losses, the curves). After each cell the run
rewrites WORKDIR/results.md and WORKDIR/grid.json (per architecture and method, the mean
and standard deviation over seeds) and WORKDIR/plots/ (loss-matrix heatmaps, forgetting
and BWT bars, loss curves of finetune beside joint).

The work is done by `experiments/continual_lm/study.py`. Bad input (an unknown method or
domain, a method that cannot train a language model, a domain too small for its validation
windows): one `error:` line, exit 2, before anything is compiled or written.
"""
import sys
import time

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from experiments.continual_lm import report, study
from runtime.workdir import check_workdir, write_json

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to experiments/configs/continual_lm.py.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the cells, results and plots.")


def main(argv):
  cli.check_arguments(argv, config=_CONFIG, workdir=_WORKDIR,
                      example="experiments/configs/continual_lm.py")
  config = _CONFIG.value
  grid, corpora = study.validate(config)
  workdir = check_workdir(_WORKDIR.value)
  command = "python -m experiments.continual_lm " + " ".join(
      a for a in sys.argv[1:] if not a.startswith("--workdir"))
  for name, corpus in corpora.items():
    logging.info("domain %s: %s", name, corpus.description)
  began, cells = time.perf_counter(), []
  for architecture, method, seed in grid:
    cells.append(study.run_cell(config, corpora, architecture, method, seed,
                                workdir / architecture / method / f"seed{seed}"))
    rows = report.summarize(cells)
    seconds = time.perf_counter() - began
    (workdir / "results.md").write_text(report.markdown(rows, list(corpora), seconds, command))
    write_json(workdir / "grid.json", dict(rows=rows, seconds=seconds, cells=len(cells),
                                           of=len(grid), config=config.to_dict()))
    report.write_plots(rows, cells, list(corpora), workdir / "plots")
  print((workdir / "results.md").read_text())


if __name__ == "__main__":
  cli.run(main)
