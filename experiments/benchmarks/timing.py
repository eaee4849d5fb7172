"""Timing and memory helpers shared by the benchmark suites."""
import os
import statistics
import time
from typing import Callable

import jax


def interleaved_medians(calls: dict[str, Callable[[], object]], warmup: int,
                        runs: int) -> dict[str, float]:
  """Median wall seconds of each call (its result is waited for), after `warmup` untimed calls.

  Each of the `runs` rounds times every call once, so that load from other processes on a
  shared machine falls on all of them alike and their ratios stay meaningful.
  """
  if runs < 1 or warmup < 0:
    raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
  for call in calls.values():
    for _ in range(warmup):
      jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for _ in range(runs):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def compiled_bytes(compiled) -> int | None:
  """Per-device bytes of a compiled executable: arguments + outputs + temporaries - aliased."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
          - stats.alias_size_in_bytes)


def load_average() -> float:
  """The machine's 1-minute load average (other processes share the cores)."""
  return round(os.getloadavg()[0], 2)


def mib(n: float | None) -> str:
  return "-" if n is None else f"{n / 2 ** 20:,.0f}"
