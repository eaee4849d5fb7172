"""Test-wide setup: every test sees 8 fake CPU devices, so sharding is exercised on each run.

The flags must be set before jax creates its CPU backend, hence at import time here.
The flags also set XLA's CPU backend optimisation level to 0: the programs of this
suite are tiny, their compiles dominate its time, and level 0 compiles them in about 60% of
the CPU time with the same results to test tolerance (tests/experiments/test_configs_train.py:
3m02s -> 1m48s of CPU). Subprocesses started by the tests get the same flags
(`tests.xla_test_flags`).

The suite runs on 2 pytest-xdist workers (pyproject.toml: `-n 2 --dist loadgroup`). Each
module's tests stay on one worker, so a module-scoped fixture (a trained run, a compiled
model) is built once; a module that sets `SPREAD_OVER_WORKERS = True` has its tests spread.
The workers and the commands the tests start share one persistent compilation cache, new
for each run of the suite (`pytest_configure`), so a program is compiled once per run.
"""
import os
import shutil
import tempfile

from tests.xla_test_flags import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
  """One persistent compilation cache for the whole run, empty at its start: the test
  processes and the commands they start load a program another of them compiled instead of
  compiling it again. Set here, in the process that starts the xdist workers, so that they
  and their subprocesses inherit it. An unreadable entry (a process killed while writing it)
  only makes jax warn and compile."""
  if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  config.jax_cache_dir = tempfile.mkdtemp(prefix="jax-test-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = config.jax_cache_dir
  jax.config.update("jax_compilation_cache_dir", config.jax_cache_dir)


def pytest_unconfigure(config):
  if hasattr(config, "jax_cache_dir"):
    shutil.rmtree(config.jax_cache_dir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, jax.devices()


def pytest_collection_modifyitems(items):
  for item in items:
    if not getattr(item.module, "SPREAD_OVER_WORKERS", False):
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
