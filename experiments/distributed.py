"""Multi-host flags: `--coordinator_address`, `--num_processes`, `--process_id`.

Every process runs the same command; `initialize()` joins them with
`jax.distributed.initialize` before any device is touched. Without `--coordinator_address`
the run is single-process (or auto-detected on managed clusters with --num_processes=0).
"""
import jax
from absl import flags

from experiments.cli import UsageError

COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def initialize() -> None:
  if COORDINATOR.value is None:
    if NUM_PROCESSES.value is not None or PROCESS_ID.value is not None:
      raise UsageError("--num_processes and --process_id need --coordinator_address")
    return
  n, i = NUM_PROCESSES.value, PROCESS_ID.value
  if n is None or n <= 0:
    raise UsageError(f"--num_processes must be a positive integer with --coordinator_address, got {n}")
  if i is None or not 0 <= i < n:
    raise UsageError(f"--process_id must be in [0, {n}), got {i}")
  jax.distributed.initialize(coordinator_address=COORDINATOR.value, num_processes=n, process_id=i)
