"""Test-wide setup: every test sees 8 fake CPU devices, so sharding is exercised on each run.

The flags must be set before jax creates its CPU backend, hence at import time here.
The flags also set XLA's CPU backend optimisation level to 0: the programs of this
suite are tiny, their compiles dominate its time, and level 0 compiles them in about 60% of
the CPU time with the same results to test tolerance (tests/experiments/test_configs_train.py:
3m02s -> 1m48s of CPU). On jaxlib 0.10 they also turn off XLA's CPU fusion emitters, which
takes 37% off the suite's CPU time (the whole suite on Python 3.11, two workers, one after the
other on 2026-12-05: 22:08 with them, 14:14 without; CPU time 41:56 and 26:26). Subprocesses
started by the tests get the same flags (`tests.xla_test_flags`).

The suite runs on 2 pytest-xdist workers (pyproject.toml: `-n 2 --dist loadgroup`). Each
module's tests stay on one worker, so a module-scoped fixture (a trained run, a compiled
model) is built once; a module that sets `SPREAD_OVER_WORKERS = True` has its tests spread.
(The group marker is added before pytest-xdist reads it, hence `tryfirst`.)

The test processes, and the commands they run, share jax's persistent compilation cache in
a temporary folder removed at the end of the session: many tests compile the same small
programs (a command killed and resumed, one tiny config in several modules), and a program
found there is loaded instead of compiled. The commands themselves (`tests.helpers.run_cli`)
are forked from a process that has jax, flax, orbax and grain imported (`tests.cli_server`).
"""
import os
import shutil
import tempfile

from tests.xla_test_flags import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE = None  # the compilation cache this process made for the session, removed at its end
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="jax_test_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, jax.devices()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
  for item in items:
    if not getattr(item.module, "SPREAD_OVER_WORKERS", False):
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_unconfigure(config):
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)
