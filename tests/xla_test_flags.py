"""XLA_FLAGS for the test processes (no jax import here: conftest reads it before jax loads)."""
from importlib.metadata import version


def xla_flags(devices: int) -> str:
  """`devices` fake CPU devices and flags that make XLA's CPU compiles fast (see conftest).

  On jaxlib 0.10, `--xla_cpu_use_fusion_emitters=false` takes XLA's older CPU emitters, which
  compiled the teach-signal test's two gradients 1.8x and 2.1x faster. jaxlib 0.12 no longer
  has the flag (it rejects unknown XLA flags at start-up), so it is set on 0.10 only.
  """
  flags = (f"--xla_force_host_platform_device_count={devices} "
           "--xla_backend_optimization_level=0")
  major, minor = (int(part) for part in version("jaxlib").split(".")[:2])
  if (major, minor) < (0, 11):
    flags += " --xla_cpu_use_fusion_emitters=false"
  return flags
