"""Command-line plumbing of the entry points (only they import this module).

Bad input (an unknown flag or config field, an invalid value, a missing file) is reported as
one line on stderr, `error: <what is wrong>`, with exit code 2, before anything is compiled
or written. Entry points raise `UsageError` for such problems and start with `cli.run(main)`.
A run that has to stop midway (`RunStopped`) is reported the same way with exit status 3.

Multi-host: `--coordinator_address`, `--num_processes`, `--process_id`; every process runs
the same command, and `initialize_distributed()` joins them with `jax.distributed.initialize`
before any device is touched. Without `--coordinator_address` the run is single-process.
A multi-process run on CPU compiles every program itself: it ignores a persistent
compilation cache (`JAX_COMPILATION_CACHE_DIR`), since on jax 0.12.1 a program with
cross-process collectives loaded from that cache hangs (jax 0.10.2, 0.11.2 and 0.12.0 run it).
"""
import errno
import importlib.util
import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging

from runtime import compile_cache, logs
from runtime.errors import RunStopped, UsageError


COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def initialize_distributed() -> None:
  """Joins the processes of a multi-host run (a no-op without --coordinator_address)."""
  if COORDINATOR.value is None:
    if NUM_PROCESSES.value is not None or PROCESS_ID.value is not None:
      raise UsageError("--num_processes and --process_id need --coordinator_address")
    return
  n, i = NUM_PROCESSES.value, PROCESS_ID.value
  if n is None or n <= 0:
    raise UsageError(f"--num_processes must be a positive integer with --coordinator_address, got {n}")
  if i is None or not 0 <= i < n:
    raise UsageError(f"--process_id must be in [0, {n}), got {i}")
  jax.distributed.initialize(coordinator_address=COORDINATOR.value, num_processes=n, process_id=i)
  if jax.default_backend() == "cpu" and jax.config.jax_compilation_cache_dir:
    logging.warning("not using the compilation cache %s: a multi-process CPU run compiles its "
                    "programs (on jax 0.12.1 one loaded from the cache hangs)",
                    jax.config.jax_compilation_cache_dir)
    compile_cache.use(None)


def parse_mesh(text: str, flag: str) -> dict:
  """axis:size pairs ("data:2,tensor:4") as {axis: size}; bad syntax is a UsageError naming
  `flag`."""
  sizes = {}
  for part in filter(None, text.split(",")):
    name, _, size = part.partition(":")
    try:
      sizes[name.strip()] = int(size)
    except ValueError:
      raise UsageError(f"{flag}: {part!r} is not axis:size (e.g. data:2,tensor:4)") from None
  return sizes


def check_arguments(argv, *, workdir=None, config=None, example: str = "",
                    required: tuple = ()) -> None:
  """UsageError for positional arguments, for a `config` flag not given (naming `example`)
  and for a `workdir` flag or one of the `required` flags not given."""
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}")
  if config is not None and config.value is None:
    raise UsageError(f"--config is required, e.g. --config={example}")
  for flag in (workdir, *required):
    if flag is not None and not flag.value:
      raise UsageError(f"--{flag.name} is required")


def fail(message: str, status: int = 2) -> None:
  """Prints `error: message` on one line and exits with `status`."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(status)


def _parse_flags(argv):
  problem = _config_flag_problem(argv)
  if problem:
    fail(problem)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, KeyError, AttributeError, TypeError, OSError) as e:
    fail(f"{type(e).__name__}: {e}" if isinstance(e, (KeyError, AttributeError)) else e)


def _load_config_file(value: str):
  """The config that `--config=PATH[:ARG]` names (the file's get_config(ARG)), loaded as
  ml_collections' config flag loads it."""
  path, _, arg = value.partition(":")
  if not path:
    raise ValueError("Path to config file is an empty string")
  if not os.path.isfile(path):
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
  spec = importlib.util.spec_from_file_location("_config_file", path)
  if spec is None:
    raise ValueError(f"{path!r} is not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _config_flag_problem(argv) -> str | None:
  """What is wrong with the config file (it does not load) or with an override that names
  a field the config lacks, found before absl parses the flags; None if nothing."""
  value = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("--config=")), None)
  if value is None:
    return None
  try:
    config = _load_config_file(value)
  except Exception as e:  # the user's config file may raise anything: report it in one line
    return f"--config: {e}"
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    flag = arg.split("=", 1)[0]
    node = config
    for part in flag[len("--config."):].split("."):
      if not hasattr(node, "keys") or part not in node:
        return f"{flag}: the config has no field {part!r}"
      node = node[part]
  return None


def run(main) -> None:
  """`absl.app.run(main)` with one-line errors for flags and for `UsageError` raised by main."""

  def guarded_main(argv):
    logs.quiet_logging()
    try:
      return main(argv)
    except UsageError as e:
      fail(str(e))
    except RunStopped as e:
      fail(str(e), status=3)

  app.run(guarded_main, flags_parser=_parse_flags)
