"""XLA_FLAGS for the test processes (no imports here: conftest reads it before jax loads)."""


def xla_flags(devices: int) -> str:
  """`devices` fake CPU devices and XLA's CPU backend optimisation level 0 (see conftest)."""
  return (f"--xla_force_host_platform_device_count={devices} "
          "--xla_backend_optimization_level=0")
