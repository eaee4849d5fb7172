"""Suite `lm`: the pretraining step of each model config on one device.

For each config it compiles `experiments.training.make_train_step` (the same step as
experiments.pretrain, non-finite guard included) on a one-device mesh, then times rounds
of `steps_per_run` steps interleaved with a dense matmul (CPU: the utilisation reference,
timed in the same rounds so that both see the same load). Model FLOPs are analytic,
3 x `flops_per_token` per token (forward plus two backward matmuls).
"""
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import configs
from runtime import training
from experiments.benchmarks.timing import compiled_bytes, interleaved_medians, load_average, mib
from runtime.performance import dense_matmul, reference_description

DEFAULT_MODELS = tuple(f"{name}:{size}" for size in ("tiny", "small")
                       for name in configs.LM_CONFIGS)


def load_config(entry: str) -> ml_collections.ConfigDict:
  """The pretraining config of `name:size` (size defaults to tiny); ValueError if unknown."""
  name, _, size = entry.partition(":")
  return configs.lm_config(name, size or "tiny")


def compiled_step(config: ml_collections.ConfigDict, mesh_sizes: dict, tokens: np.ndarray):
  """(run, compiled step, initial state, global batch, compile seconds) of the pretraining
  step of `config` on a mesh of `mesh_sizes`, for the host tokens [batch, seq + 1]."""
  run = training.prepare(config, mesh_sizes=dict(mesh_sizes))
  tx = training.optimizer(config, run)
  shardings = training.state_shardings(run, tx)
  step_fn = training.make_train_step(run, tx, shardings)
  with jax.set_mesh(run.mesh):
    state = training.initial_state(run, tx, shardings)
    batch = training.global_batch(run, tokens)
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
  return run, compiled, state, batch, time.perf_counter() - start


def time_config(config: ml_collections.ConfigDict, *, warmup: int, runs: int,
                steps_per_run: int) -> dict:
  """One row: the compiled train step of `config` on one device, timed against the reference."""
  tokens = np.random.default_rng(0).integers(0, 256, (config.batch_size, config.seq_len + 1),
                                             dtype=np.int32)
  run, compiled, state, batch, compile_seconds = compiled_step(
      config, dict(data=1, fsdp=1, tensor=1), tokens)
  dtype = jnp.dtype(config.model.get("dtype", "float32"))
  peak, reference = reference_description(dtype, devices=1)
  with jax.set_mesh(run.mesh):
    carry = dict(state=state)

    def steps():
      for _ in range(steps_per_run):
        carry["state"], metrics = compiled(carry["state"], batch)
      return metrics

    calls = dict(step=steps)
    if peak is None:
      matmul, matmul_flops = dense_matmul(dtype)
      calls["matmul"] = matmul
    seconds = interleaved_medians(calls, warmup, runs)
  step_seconds = seconds["step"] / steps_per_run
  tokens_per_step = config.batch_size * config.seq_len
  model_flops = 3 * run.flops_per_token * tokens_per_step / step_seconds
  if peak is None:
    peak = matmul_flops / seconds["matmul"]
  return dict(params=run.num_params, batch_size=config.batch_size, seq_len=config.seq_len,
              step_seconds=step_seconds, tokens_per_sec=tokens_per_step / step_seconds,
              model_flops_per_sec=model_flops, reference_flops_per_sec=peak,
              reference=reference, utilisation=model_flops / peak,
              compile_seconds=compile_seconds, peak_memory_bytes=compiled_bytes(compiled))


def run(models=DEFAULT_MODELS, *, seq_len: int | None = None, batch_size: int | None = None,
        warmup: int = 2, runs: int = 5, steps_per_run: int = 5, overrides: dict | None = None) -> dict:
  """Times each `name:size` in `models`; `seq_len`/`batch_size` override every config, and
  `overrides` sets `config.model` fields (e.g. a smaller width for a smoke test)."""
  rows = []
  for entry in models:
    config = load_config(entry)
    if seq_len:
      config.seq_len = seq_len
    if batch_size:
      config.batch_size = batch_size
    config.model.update(overrides or {})
    row = time_config(config, warmup=warmup, runs=runs, steps_per_run=steps_per_run)
    rows.append(dict(model=entry if ":" in entry else f"{entry}:tiny", load=load_average(), **row))
  return dict(warmup=warmup, runs=runs, steps_per_run=steps_per_run, rows=rows)


def table(result: dict) -> str:
  lines = [f"{'model':<22}{'params':>9}{'batch x seq':>13}{'step s':>9}{'tokens/s':>10}"
           f"{'model GFLOP/s':>15}{'util.':>7}{'compile s':>11}{'peak MiB':>10}{'load':>6}"]
  for r in result["rows"]:
    lines.append(
        f"{r['model']:<22}{r['params'] / 1e6:>8.2f}M{r['batch_size']:>6} x {r['seq_len']:<5}"
        f"{r['step_seconds']:>9.3f}{r['tokens_per_sec']:>10,.0f}"
        f"{r['model_flops_per_sec'] / 1e9:>15.1f}{100 * r['utilisation']:>6.1f}%"
        f"{r['compile_seconds']:>11.1f}{mib(r['peak_memory_bytes']):>10}{r['load']:>6.1f}")
  if result["rows"]:
    r = result["rows"][0]
    lines.append(f"utilisation against {r['reference']} ({r['reference_flops_per_sec'] / 1e9:.0f} "
                 f"GFLOP/s for the first row), one device")
  return "\n".join(lines)
