"""Throughput accounting: model FLOPs utilisation against a reference rate, and what a timing
ran on (`machine`).

On CPU the reference is a dense matmul timed in the same process (the machine's practical
peak for the compute dtype); on GPUs and TPUs of a known kind it is the chip's bf16 peak
times the number of chips. Model FLOPs are analytic (`model.flops_per_token`), x3 for a
training step (forward plus two backward matmuls), attention counted causally.
"""
import functools
import os
import platform
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip, by device_kind prefix.
PEAK_FLOPS = {
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


# x86 vector extensions among which compilers and math libraries choose their code paths;
# `cpu_description` names those the CPU has.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_description(cpuinfo: str) -> str | None:
  """The first processor of a /proc/cpuinfo text: its model name, then, where given, its
  family, model, stepping and cache size and which of VECTOR_FLAGS it has, e.g. "Intel(R)
  Xeon(R) Processor (family 6, model 207, stepping 2, cache 307200 KB; avx2 avx512f
  avx512_bf16 amx_tile)"; None without a model name. A model name alone does not tell two
  CPUs apart (cloud machines often report a generic one)."""
  fields = {}
  for line in cpuinfo.splitlines():
    if not line.strip():
      break
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  if "model name" not in fields:
    return None
  ids = ", ".join(f"{key.removeprefix('cpu ').removesuffix(' size')} {fields[key]}"
                  for key in ("cpu family", "model", "stepping", "cache size") if key in fields)
  flags = " ".join(f for f in VECTOR_FLAGS if f in fields.get("flags", "").split())
  details = "; ".join(part for part in (ids, flags) if part)
  return fields["model name"] + (f" ({details})" if details else "")


def machine() -> str:
  """What a timing ran on: the CPU (`cpu_description` of /proc/cpuinfo where there is one,
  else the processor or architecture name), the number of cores, and the first device's
  platform and kind, e.g. "Intel(R) Xeon(R) Processor (family 6, model 207, stepping 2,
  cache 307200 KB; avx2 avx512f avx512_bf16 amx_tile), 2 cores; cpu: cpu, 1 device(s)"."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = cpu_description(f.read()) or cpu
  except OSError:
    pass
  device = jax.local_devices()[0]
  return (f"{cpu}, {os.cpu_count()} cores; {device.platform}: {device.device_kind}, "
          f"{jax.device_count()} device(s)")


def dense_matmul(dtype=jnp.float32, n: int = 1024) -> tuple[Callable[[], jax.Array], float]:
  """(call, FLOPs): a compiled n x n x n matmul on the first local device, and its 2 n^3 FLOPs."""
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  matmul = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
  return lambda: matmul(a, a), 2.0 * n ** 3


def measured_matmul_flops(dtype=jnp.float32, n: int = 1024, repeats: int = 5) -> float:
  """Median FLOP/s of an n x n x n matmul on the first local device, after warm-up."""
  call, flops = dense_matmul(dtype, n)
  call().block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call().block_until_ready()
    times.append(time.perf_counter() - start)
  return flops / float(np.median(times))


def reference_description(dtype=jnp.float32,
                          devices: int | None = None) -> tuple[float | None, str]:
  """(peak FLOP/s, description) of `devices` (default: all) GPUs/TPUs of a known kind;
  (None, description) where the reference must be measured (CPU, or an unknown chip): a
  dense matmul of `dtype` timed in the same process."""
  device = jax.local_devices()[0]
  devices = devices or jax.device_count()
  if device.platform != "cpu":
    for prefix, peak in PEAK_FLOPS.items():
      if device.device_kind.startswith(prefix):
        return peak * devices, f"{devices} x {device.device_kind} bf16 peak"
  return None, f"{device.platform} dense {jnp.dtype(dtype).name} matmul, measured"


@functools.cache
def reference_flops(dtype=jnp.float32) -> tuple[float, str]:
  """(FLOP/s, description) that model FLOP/s are compared against (measured once per
  process and dtype)."""
  peak, description = reference_description(dtype)
  return (peak if peak is not None else measured_matmul_flops(dtype)), description
