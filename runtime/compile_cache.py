"""A folder of compiled programs: jax's persistent compilation cache.

XLA takes seconds to compile a small model's train or evaluation step, as long as hundreds of
its steps take on a CPU. With a cache, a process that needs a program that another process
compiled before it (the next seed of a study, another worker, a run resumed after a crash)
loads it from the folder instead of compiling it again. Entries are keyed by the program,
its compile options, the devices and the jax version, so an entry is only loaded for the
same program; programs that compile in under a second are not saved. An entry that cannot be
read (cut short by a crash, or being written by another process) is compiled again, with a
warning. The folder is trusted: whoever can write to it can change what runs.

Not for multi-process CPU runs: on jax 0.12.1 (CPU, gloo collectives) a program with
cross-process collectives loaded from the cache hangs (compiled, it runs; jax 0.10.2, 0.11.2
and 0.12.0 run both), so `experiments.cli.initialize_distributed` turns the cache off there.
The studies' workers are single-process.
"""
import contextlib
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache


def use(directory: Path | str | None) -> None:
  """Loads and saves this process's compiled programs in DIRECTORY from its next compile
  on (None: no cache)."""
  jax.config.update("jax_compilation_cache_dir", None if directory is None else str(directory))
  compilation_cache.reset_cache()


@contextlib.contextmanager
def using(directory: Path | str):
  """`use(directory)` while the context is open, then the cache this process had before."""
  before = jax.config.jax_compilation_cache_dir
  use(directory)
  try:
    yield
  finally:
    use(before)
