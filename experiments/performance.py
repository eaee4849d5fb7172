"""Throughput accounting: model FLOPs utilisation against a reference rate.

On CPU the reference is a dense matmul timed in the same process (the machine's practical
peak for the compute dtype); on GPUs and TPUs of a known kind it is the chip's bf16 peak
times the number of chips. Model FLOPs are analytic (`model.flops_per_token`), x3 for a
training step (forward plus two backward matmuls), attention counted causally.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip, by device_kind prefix.
PEAK_FLOPS = {
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def measured_matmul_flops(dtype=jnp.float32, n: int = 1024, repeats: int = 5) -> float:
  """Median FLOP/s of an n x n x n matmul on the first local device, after warm-up."""
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / float(np.median(times))


def reference_flops(dtype=jnp.float32) -> tuple[float, str]:
  """(FLOP/s, description) that model FLOP/s are compared against."""
  device = jax.local_devices()[0]
  if device.platform != "cpu":
    for prefix, peak in PEAK_FLOPS.items():
      if device.device_kind.startswith(prefix):
        return peak * jax.device_count(), f"{jax.device_count()} x {device.device_kind} bf16 peak"
  flops = measured_matmul_flops(dtype)
  return flops, f"{device.platform} dense {jnp.dtype(dtype).name} matmul, measured"
