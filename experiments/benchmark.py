"""Speed and memory of the zoo: one command, several suites, a table and a JSON file.

  python -m experiments.benchmark --suite=all --out=bench.json

Suites (each: warm-up, then the median of several timed runs; the suites live in
`experiments/benchmarks/`):
  lm       the real pretraining step of each config:size on one device: tokens/s, analytic
           model FLOP/s, utilisation against a dense matmul timed in the same rounds (CPU)
           or the chip's peak (GPU/TPU), compile time, compiled peak memory;
  memory   the Titans memory's chunked path against its per-token reference, and memory;
  pkm      product-key lookup time per token as N grows (16K..1M slots), and per-device
           table bytes on 8 devices;
  sharded  a train step on 8 devices (data=8; data=4 x tensor=2) against one device;
  cl       the continual-learning grid's wall time;
  all      every suite above.
The JSON holds the date, machine, jax version, load average and every row.
"""
import os

# Eight host devices for the sharded and pkm suites; set before jax creates its CPU backend.
# The lm suite runs on a one-device mesh.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
from absl import flags  # noqa: E402

from experiments import cli  # noqa: E402
from experiments.benchmarks import (continual_grid, product_key, sharded_step,  # noqa: E402
                                    titans_memory, train_step)
from experiments.benchmarks.timing import load_average  # noqa: E402

SUITES = {"lm": train_step, "memory": titans_memory, "pkm": product_key,
          "sharded": sharded_step, "cl": continual_grid}
# Default (warm-up, runs) per suite; a run of `cl` is a whole grid.
DEFAULT_RUNS = {"lm": (2, 5), "memory": (1, 3), "pkm": (2, 5), "sharded": (2, 5), "cl": (1, 3)}

SUITE = flags.DEFINE_enum("suite", "lm", [*SUITES, "all"], "Which benchmarks to run.")
OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")
RUNS = flags.DEFINE_integer("runs", None, "Timed runs per benchmark, the median is reported "
                            f"(default per suite: {', '.join(f'{k} {v[1]}' for k, v in DEFAULT_RUNS.items())}).")
WARMUP = flags.DEFINE_integer("warmup", None, "Untimed runs first (default per suite: "
                              f"{', '.join(f'{k} {v[0]}' for k, v in DEFAULT_RUNS.items())}).")
MODELS = flags.DEFINE_list("models", None, "lm: only these config:size entries, e.g. "
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
SHARDED_MODEL = flags.DEFINE_string("sharded_model", "transformer:tiny",
                                    "sharded: the config:size whose step is timed.")


def integers(flag) -> list[int]:
  try:
    return [int(v) for v in flag.value]
  except ValueError as e:
    raise cli.UsageError(f"--{flag.name} must be integers: {e}") from e


def suite_calls(names: list[str]) -> list:
  """Validates every flag the chosen suites use; returns [(name, call)] to run in order."""
  warmup_runs = {}
  for name in names:
    warmup, runs = DEFAULT_RUNS[name]
    warmup_runs[name] = dict(warmup=warmup if WARMUP.value is None else WARMUP.value,
                             runs=runs if RUNS.value is None else RUNS.value)
  calls = []
  if "lm" in names:
    models = MODELS.value or list(train_step.DEFAULT_MODELS)
    for entry in models:
      name, _, size = entry.partition(":")
      if name not in train_step.LM_CONFIGS:
        raise cli.UsageError(f"--models: unknown config {name!r}; choose from "
                             f"{list(train_step.LM_CONFIGS)}")
      try:
        train_step.load_config(entry)
      except ValueError as e:
        raise cli.UsageError(f"--models {name}:{size}: {e}") from e
    calls.append(("lm", lambda: train_step.run(
        models, seq_len=SEQ_LEN.value, batch_size=BATCH_SIZE.value,
        steps_per_run=STEPS_PER_RUN.value, **warmup_runs["lm"])))
  if "memory" in names:
    heads, chunk_sizes = integers(MEMORY_HEADS), integers(MEMORY_CHUNK_SIZES)
    for h in heads:
      if h <= 0 or 256 % h:
        raise cli.UsageError(f"--memory_heads: {h} does not divide the width 256")
    if min(chunk_sizes) <= 0:
      raise cli.UsageError(f"--memory_chunk_sizes must be positive, got {chunk_sizes}")
    calls.append(("memory", lambda: titans_memory.run(heads=heads, chunk_sizes=chunk_sizes,
                                                      **warmup_runs["memory"])))
  if "pkm" in names:
    sizes = integers(PKM_SIZES)
    try:
      product_key.check_sizes(sizes + [PKM_MEMORY_SLOTS.value] * bool(PKM_MEMORY_SLOTS.value))
    except ValueError as e:
      raise cli.UsageError(f"--pkm_sizes/--pkm_memory_slots: {e}") from e
    calls.append(("pkm", lambda: product_key.run(sizes=sizes, memory_slots=PKM_MEMORY_SLOTS.value,
                                                 **warmup_runs["pkm"])))
  if "sharded" in names:
    try:
      train_step.load_config(SHARDED_MODEL.value)
    except ValueError as e:
      raise cli.UsageError(f"--sharded_model {SHARDED_MODEL.value}: {e}") from e
    calls.append(("sharded", lambda: sharded_step.run(SHARDED_MODEL.value,
                                                      **warmup_runs["sharded"])))
  if "cl" in names:
    calls.append(("cl", lambda: continual_grid.run(**warmup_runs["cl"])))
  return calls


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  device = jax.local_devices()[0]
  return (f"{cpu}, {os.cpu_count()} cores; {device.platform}: {device.device_kind}, "
          f"{jax.device_count()} device(s)")


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  if (RUNS.value is not None and RUNS.value <= 0) or STEPS_PER_RUN.value <= 0:
    raise cli.UsageError("--runs and --steps_per_run must be positive integers")
  if WARMUP.value is not None and WARMUP.value < 0:
    raise cli.UsageError(f"--warmup must be >= 0, got {WARMUP.value}")
  if OUT.value and not os.path.isdir(os.path.dirname(os.path.abspath(OUT.value))):
    raise cli.UsageError(f"--out {OUT.value!r}: its folder does not exist")
  names = list(SUITES) if SUITE.value == "all" else [SUITE.value]
  calls = suite_calls(names)
  results = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                 jax=jax.__version__, python=platform.python_version(), machine=machine(),
                 command="python -m experiments.benchmark " + " ".join(sys.argv[1:]),
                 load_at_start=load_average(), suites={})
  for name, call in calls:
    results["suites"][name] = call()
    print(f"\n[{name}]\n{SUITES[name].table(results['suites'][name])}", flush=True)
    if OUT.value:  # written after every suite, so a long run keeps what it measured
      with open(OUT.value, "w") as f:
        json.dump(results, f, indent=2)
  print(f"\n{results['date']}, jax {results['jax']}, {results['machine']}; load at start "
        f"{results['load_at_start']}, at end {load_average()}")


if __name__ == "__main__":
  cli.run(main)
