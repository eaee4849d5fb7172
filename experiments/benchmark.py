"""Speed and memory of the zoo: one command, several suites, a table and a JSON file.

  python -m experiments.benchmark --suite=lm|memory|pkm|sharded|cl|generate|loader|smf|all [--out=bench.json]

The suites are described in experiments/benchmarks/suites.py; results: docs/results/.
"""
import os

# Eight host devices for the sharded and pkm suites; set before jax creates its CPU backend.
# The lm suite runs on a one-device mesh.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import sys  # noqa: E402

from absl import flags  # noqa: E402

from experiments import cli  # noqa: E402
from experiments.benchmarks import product_key  # noqa: E402
from experiments.benchmarks.suites import (DEFAULT_RUNS, SUITES, run_suites,  # noqa: E402
                                           suite_calls)

SUITE = flags.DEFINE_enum("suite", "lm", [*SUITES, "all"], "Which benchmarks to run.")
OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")
RUNS = flags.DEFINE_integer("runs", None, "Timed runs per benchmark, the median is reported "
                            f"(default per suite: {', '.join(f'{k} {v[1]}' for k, v in DEFAULT_RUNS.items())}).")
WARMUP = flags.DEFINE_integer("warmup", None, "Untimed runs first (default per suite: "
                              f"{', '.join(f'{k} {v[0]}' for k, v in DEFAULT_RUNS.items())}).")
MODELS = flags.DEFINE_list("models", None, "lm, generate: only these config:size entries, e.g. "
                           "transformer:small,hope:small (default: every config, tiny and small).")
SEQ_LEN = flags.DEFINE_integer("seq_len", None, "lm: override every config's seq_len.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "lm: override every config's batch_size.")
STEPS_PER_RUN = flags.DEFINE_integer("steps_per_run", 5, "lm: train steps per timed run.")
MEMORY_HEADS = flags.DEFINE_list("memory_heads", ["1", "2", "4", "8"],
                                 "memory: head counts (head_dim = 256 / heads).")
MEMORY_CHUNK_SIZES = flags.DEFINE_list("memory_chunk_sizes", ["16", "64", "128"],
                                       "memory: chunk sizes of the chunked path.")
PKM_SIZES = flags.DEFINE_list("pkm_sizes", [str(n) for n in product_key.DEFAULT_SIZES],
                              "pkm: numbers of slots N (perfect squares) to time.")
PKM_MEMORY_SLOTS = flags.DEFINE_integer("pkm_memory_slots", 1024 ** 2,
                                        "pkm: N for the 8-device memory analysis (0: skip).")
CL_METHODS = flags.DEFINE_list("cl_methods", None, "cl: time these methods side by side "
                               "(split digits, Class-IL, MLP(400, 400)) instead of the grid.")
CL_FISHER = flags.DEFINE_enum("cl_fisher", "sampled", ["exact", "sampled"],
                              "cl: the Fisher estimate of ewc and online_ewc.")
SHARDED_MODEL = flags.DEFINE_string("sharded_model", "transformer:tiny",
                                    "sharded: the config:size whose step is timed.")


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  names = list(SUITES) if SUITE.value == "all" else [SUITE.value]
  run_suites(suite_calls(names, flags.FLAGS), OUT.value,
             "python -m experiments.benchmark " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  cli.run(main)
