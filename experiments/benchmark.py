"""Throughput of the zoo's train steps: tokens/s and model-FLOPs utilisation.

  python -m experiments.benchmark --suite=lm --out=bench.json

For each model config it compiles the real pretraining step (the same code as
experiments.pretrain), runs warm-up steps, then reports the median over timed runs of
tokens/s, analytic model FLOP/s, utilisation against a dense matmul timed in the same
process (CPU) or the chip's peak (GPU/TPU), compile time, and the compiled executable's
peak memory. Results are printed as a table and written as JSON.
"""
import datetime
import importlib
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from experiments import cli, training
from experiments.performance import reference_flops

LM_CONFIGS = ("transformer", "titans_lmm", "titans_mac", "titans_mag", "titans_mal", "hope",
              "hope_attention", "memory_lm")
SUITES = {"lm": [(name, size) for size in ("tiny", "small") for name in LM_CONFIGS]}
SUITE = flags.DEFINE_enum("suite", "lm", sorted(SUITES), "Which benchmarks to run.")
MODELS = flags.DEFINE_list("models", None, "Only these config:size entries, e.g. "
                           "transformer:small,hope:small (default: the whole suite).")
SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Override every config's seq_len.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Override every config's batch_size.")
OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")
RUNS = flags.DEFINE_integer("runs", 5, "Timed runs per benchmark (the median is reported).")
STEPS_PER_RUN = flags.DEFINE_integer("steps_per_run", 5, "Train steps per timed run.")


def time_train_step(config, runs: int, steps_per_run: int) -> dict:
  """Compiles and times the pretraining step of `config` on random byte tokens."""
  run = training.prepare(config)
  tx = training.optimizer(config)
  shardings = training.state_shardings(run, tx)
  step_fn = training.make_train_step(run, tx, shardings)
  tokens = np.random.default_rng(0).integers(0, 256, (config.batch_size, config.seq_len + 1),
                                             dtype=np.int32)
  with jax.set_mesh(run.mesh):
    state = training.initial_state(run, tx, shardings)
    batch = training.global_batch(run, tokens)
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    for _ in range(2):  # warm-up
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(runs):
      start = time.perf_counter()
      for _ in range(steps_per_run):
        state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      times.append((time.perf_counter() - start) / steps_per_run)
  step_seconds = float(np.median(times))
  step_flops = 3 * run.flops_per_token * config.batch_size * config.seq_len
  peak = None
  if memory is not None:
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
            + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return dict(params=run.num_params, batch_size=config.batch_size, seq_len=config.seq_len,
              step_seconds=step_seconds,
              tokens_per_sec=config.batch_size * config.seq_len / step_seconds,
              model_flops_per_sec=step_flops / step_seconds, compile_seconds=compile_seconds,
              peak_memory_bytes=peak)


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  if RUNS.value <= 0 or STEPS_PER_RUN.value <= 0:
    raise cli.UsageError("--runs and --steps_per_run must be positive integers")
  device = jax.local_devices()[0]
  results = dict(date=datetime.date.today().isoformat(), jax=jax.__version__,
                 machine=f"{platform.processor() or platform.machine()}, "
                         f"{device.platform}: {device.device_kind}, {jax.device_count()} device(s)",
                 rows=[])
  entries = SUITES[SUITE.value]
  if MODELS.value:
    entries = []
    for entry in MODELS.value:
      name, _, size = entry.partition(":")
      if name not in LM_CONFIGS:
        raise cli.UsageError(f"--models: unknown config {name!r}; choose from {list(LM_CONFIGS)}")
      entries.append((name, size or "tiny"))
  for name, size in entries:
    try:
      config = importlib.import_module(f"experiments.configs.{name}").get_config(size)
    except ValueError as e:
      raise cli.UsageError(f"--models {name}:{size}: {e}") from e
    if SEQ_LEN.value:
      config.seq_len = SEQ_LEN.value
    if BATCH_SIZE.value:
      config.batch_size = BATCH_SIZE.value
    row = time_train_step(config, RUNS.value, STEPS_PER_RUN.value)
    # The reference is timed right after the model, in the same process.
    ref, ref_desc = reference_flops(jnp.dtype(config.model.get("dtype", "float32")))
    row.update(model=f"{name}:{size}", reference_flops_per_sec=ref, reference=ref_desc,
               utilisation=row["model_flops_per_sec"] / ref)
    results["rows"].append(row)
    logging.info("%s: %s", row["model"], row)
  header = (f"{'model':<22}{'params':>10}{'batch x seq':>13}{'tokens/s':>11}{'util.':>8}"
            f"{'compile s':>11}{'peak MiB':>10}")
  print(header)
  for r in results["rows"]:
    mem = f"{r['peak_memory_bytes'] / 2**20:.0f}" if r["peak_memory_bytes"] else "-"
    print(f"{r['model']:<22}{r['params'] / 1e6:>9.2f}M{r['batch_size']:>6} x {r['seq_len']:<5}"
          f"{r['tokens_per_sec']:>11.0f}{100 * r['utilisation']:>7.1f}%"
          f"{r['compile_seconds']:>11.1f}{mem:>10}")
  print(f"{results['date']}, jax {results['jax']}, {results['machine']}; utilisation against "
        f"{results['rows'][0]['reference']}")
  if OUT.value:
    with open(OUT.value, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
