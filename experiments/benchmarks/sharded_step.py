"""Suite `sharded`: one train step on several meshes against one device, same global batch.

The same config, initial state and tokens on each mesh (default: one device, data=8,
data=4 x tensor=2), all in one process, timed in interleaved rounds. On one CPU the 8
devices are XLA's host-platform devices (`--xla_force_host_platform_device_count=8`), which
share the machine's cores: this measures the overhead of partitioning and collectives, not
a speed-up. The first step's loss on each mesh is compared with one device's.
"""
import math

import jax
import numpy as np

from experiments.benchmarks.timing import compiled_bytes, interleaved_medians, load_average, mib
from experiments.benchmarks.train_step import compiled_step, load_config

DEFAULT_MESHES = (dict(data=1), dict(data=8), dict(data=4, tensor=2))


def mesh_name(sizes: dict) -> str:
  return " x ".join(f"{k}={v}" for k, v in sizes.items())


def run(model: str = "transformer:tiny", *, meshes=DEFAULT_MESHES, warmup: int = 2,
        runs: int = 5, overrides: dict | None = None, batch_size: int | None = None,
        seq_len: int | None = None) -> dict:
  """Rows per mesh: step seconds, tokens/s, speed against the first mesh, loss difference."""
  config = load_config(model)
  config.model.update(overrides or {})
  config.batch_size = batch_size or config.batch_size
  config.seq_len = seq_len or config.seq_len
  needed = max(math.prod(m.values()) for m in meshes)
  if jax.device_count() < needed:
    return dict(model=model, rows=[], note=f"skipped: needs {needed} devices, "
                                           f"{jax.device_count()} exist")
  tokens = np.random.default_rng(0).integers(0, 256, (config.batch_size, config.seq_len + 1),
                                             dtype=np.int32)
  calls, info = {}, {}
  for sizes in meshes:
    run_, compiled, state, batch, compile_seconds = compiled_step(config, sizes, tokens)
    with jax.set_mesh(run_.mesh):
      # The first step (from the shared initial state) gives the loss to compare.
      carry = dict(state=state)
      carry["state"], metrics = compiled(carry["state"], batch)
      loss = float(metrics["loss"])

    def step(compiled=compiled, carry=carry, batch=batch, mesh=run_.mesh):
      with jax.set_mesh(mesh):
        carry["state"], metrics = compiled(carry["state"], batch)
      return metrics

    name = mesh_name(sizes)
    calls[name] = step
    info[name] = dict(devices=run_.mesh.devices.size, compile_seconds=compile_seconds,
                      first_loss=loss, per_device_bytes=compiled_bytes(compiled))
  seconds = interleaved_medians(calls, warmup, runs)
  first = next(iter(calls))
  tokens_per_step = config.batch_size * config.seq_len
  rows = [dict(mesh=name, step_seconds=s, tokens_per_sec=tokens_per_step / s,
               relative_speed=seconds[first] / s,
               loss_difference=abs(info[name]["first_loss"] - info[first]["first_loss"]),
               load=load_average(), **info[name])
          for name, s in seconds.items()]
  return dict(model=model, batch_size=config.batch_size, seq_len=config.seq_len, warmup=warmup,
              runs=runs, rows=rows, note=None)


def table(result: dict) -> str:
  if not result["rows"]:
    return f"sharded {result['model']}: {result['note']}"
  lines = [f"Train step of {result['model']}, global batch {result['batch_size']} x seq "
           f"{result['seq_len']}, same tokens on every mesh",
           f"{'mesh':<20}{'devices':>8}{'step s':>9}{'tokens/s':>10}{'vs first':>10}"
           f"{'|loss diff|':>13}{'compile s':>11}{'MiB/device':>12}{'load':>6}"]
  for r in result["rows"]:
    lines.append(f"{r['mesh']:<20}{r['devices']:>8}{r['step_seconds']:>9.4f}"
                 f"{r['tokens_per_sec']:>10,.0f}{r['relative_speed']:>9.2f}x"
                 f"{r['loss_difference']:>13.2e}{r['compile_seconds']:>11.1f}"
                 f"{mib(r['per_device_bytes']):>12}{r['load']:>6.1f}")
  return "\n".join(lines)
