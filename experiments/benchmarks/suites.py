"""The suites of `python -m experiments.benchmark`: library functions, no flags.

Each suite (warm-up, then the median of several timed runs) is a module with
`run(...) -> dict` (its parameters and `rows`) and `table(result) -> str`:
  lm       the real pretraining step of each config:size on one device: tokens/s, analytic
           model FLOP/s, utilisation against a dense matmul timed in the same rounds (CPU)
           or the chip's peak (GPU/TPU), compile time, compiled peak memory;
  memory   the Titans memory's chunked path against its per-token reference, and memory;
  pkm      product-key lookup time per token as N grows (16K..1M slots), and per-device
           table bytes on 8 devices;
  sharded  a train step on 8 devices (data=8; data=4 x tensor=2) against one device;
  cl       the continual-learning grid's wall time, or chosen methods side by side;
  generate sampling speed by incremental decoding: tokens/s at batch 1 and 8, and the cost
           of a token after 1K and 8K tokens of context (tiny configs);
  loader   batches from SentencePiece shards of the standard library (in process and with
           2 workers) against the small transformer's train step they feed;
  smf      a Sparse Memory Finetuning step on the fact-injection study's table against the
           same model's step with the table frozen.
The JSON holds the date, machine, jax version, load average and every row.
"""
import datetime
import json
import os
import platform

import jax

from cl_methods import registry
from experiments import configs
from experiments.benchmarks import (continual_grid, decoding, loader, product_key,
                                    sharded_step, smf, titans_memory, train_step)
from experiments.benchmarks.timing import load_average
from runtime import performance
from runtime.errors import UsageError

SUITES = {"lm": train_step, "memory": titans_memory, "pkm": product_key,
          "sharded": sharded_step, "cl": continual_grid, "generate": decoding, "loader": loader,
          "smf": smf}
# Default (warm-up, runs) per suite; a run of `cl` is a whole grid.
DEFAULT_RUNS = {"lm": (2, 5), "memory": (1, 3), "pkm": (2, 5), "sharded": (2, 5), "cl": (1, 3),
                "generate": (1, 3), "loader": (1, 5),
                "smf": (2, 7)}


def integers(values, name: str) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError as e:
    raise UsageError(f"--{name} must be integers: {e}") from e


def suite_calls(names: list[str], o) -> list:
  """Validates every option the chosen suites use (`o`: the flag values by name, as
  attributes); returns [(name, call)] to run in order."""
  if (o.runs is not None and o.runs <= 0) or o.steps_per_run <= 0:
    raise UsageError("--runs and --steps_per_run must be positive integers")
  if o.warmup is not None and o.warmup < 0:
    raise UsageError(f"--warmup must be >= 0, got {o.warmup}")
  if o.out and not os.path.isdir(os.path.dirname(os.path.abspath(o.out))):
    raise UsageError(f"--out {o.out!r}: its folder does not exist")
  warmup_runs = {}
  for name in names:
    warmup, runs = DEFAULT_RUNS[name]
    warmup_runs[name] = dict(warmup=warmup if o.warmup is None else o.warmup,
                             runs=runs if o.runs is None else o.runs)
  calls = []
  if "lm" in names:
    models = _checked_models(o.models or list(train_step.DEFAULT_MODELS))
    calls.append(("lm", lambda: train_step.run(
        models, seq_len=o.seq_len, batch_size=o.batch_size,
        steps_per_run=o.steps_per_run, **warmup_runs["lm"])))
  if "memory" in names:
    heads, chunk_sizes = integers(o.memory_heads, "memory_heads"), integers(o.memory_chunk_sizes, "memory_chunk_sizes")
    for h in heads:
      if h <= 0 or 256 % h:
        raise UsageError(f"--memory_heads: {h} does not divide the width 256")
    if min(chunk_sizes) <= 0:
      raise UsageError(f"--memory_chunk_sizes must be positive, got {chunk_sizes}")
    calls.append(("memory", lambda: titans_memory.run(heads=heads, chunk_sizes=chunk_sizes,
                                                      **warmup_runs["memory"])))
  if "pkm" in names:
    sizes = integers(o.pkm_sizes, "pkm_sizes")
    try:
      product_key.check_sizes(sizes + [o.pkm_memory_slots] * bool(o.pkm_memory_slots))
    except ValueError as e:
      raise UsageError(f"--pkm_sizes/--pkm_memory_slots: {e}") from e
    calls.append(("pkm", lambda: product_key.run(sizes=sizes, memory_slots=o.pkm_memory_slots,
                                                 **warmup_runs["pkm"])))
  if "sharded" in names:
    try:
      train_step.load_config(o.sharded_model)
    except ValueError as e:
      raise UsageError(f"--sharded_model {o.sharded_model}: {e}") from e
    calls.append(("sharded", lambda: sharded_step.run(o.sharded_model,
                                                      **warmup_runs["sharded"])))
  if "cl" in names:
    methods = list(o.cl_methods or ())
    unknown = sorted(set(methods) - set(registry.METHOD_NAMES))
    if unknown:
      raise UsageError(f"--cl_methods: unknown {unknown}; choose from {list(registry.METHOD_NAMES)}")
    fisher = {"ewc.fisher": o.cl_fisher, "online_ewc.fisher": o.cl_fisher}
    calls.append(("cl", lambda: continual_grid.run(methods=methods, overrides=fisher,
                                                   **warmup_runs["cl"])))
  if "generate" in names:
    entries = _checked_models(o.models or list(decoding.DEFAULT_MODELS))
    tiny = [e for e in entries if e.partition(":")[2] in ("", "tiny")]
    calls.append(("generate", lambda: decoding.run(entries, tiny, **warmup_runs["generate"])))
  if "loader" in names:
    calls.append(("loader", lambda: loader.run(steps_per_run=o.steps_per_run,
                                               **warmup_runs["loader"])))
  if "smf" in names:
    calls.append(("smf", lambda: smf.run(**warmup_runs["smf"])))
  return calls


def _checked_models(models: list[str]) -> list[str]:
  """--models entries name:size, each a known config; UsageError naming the first that is not."""
  for entry in models:
    name, _, size = entry.partition(":")
    if name not in configs.LM_CONFIGS:
      raise UsageError(f"--models: unknown config {name!r}; choose from "
                       f"{list(configs.LM_CONFIGS)}")
    try:
      train_step.load_config(entry)
    except ValueError as e:
      raise UsageError(f"--models {name}:{size}: {e}") from e
  return models


def run_suites(calls: list, out: str | None, command: str) -> dict:
  """Runs `suite_calls`' calls in order, printing each table; the results (with the date,
  machine and load) go to `out` as JSON after every suite, so a long run keeps what it
  measured."""
  results = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                 jax=jax.__version__, python=platform.python_version(),
                 machine=performance.machine(), command=command, load_at_start=load_average(),
                 suites={})
  for name, call in calls:
    results["suites"][name] = call()
    print(f"\n[{name}]\n{SUITES[name].table(results['suites'][name])}", flush=True)
    if out:
      with open(out, "w") as f:
        json.dump(results, f, indent=2)
  print(f"\n{results['date']}, jax {results['jax']}, {results['machine']}; load at start "
        f"{results['load_at_start']}, at end {load_average()}")
  return results
