"""Runs `python -m MODULE ARGS` commands for the tests, each in a child forked from a process
that has already imported the libraries every command needs.

A command line of this project spends about 2.8 s importing jax, flax, orbax and grain
before it reads its flags, and the suite runs many of them (the bad-input sweep alone, 73).
This process imports those libraries once (no jax backend is started, so the children start
their own, with their own XLA_FLAGS), then for each request on stdin, one JSON line
{"module", "args", "env", "cwd", "timeout"}, forks a child that takes the request's
environment, working folder and arguments, runs the module as `__main__` and exits as that
command would (atexit handlers run). It answers one JSON line {"returncode", "stdout",
"stderr"}; a child still running after the timeout is killed and answered with
"timeout": true. The project's own modules and their absl flags are imported by each child,
never here. jax reads its `JAX_*` options from the environment when it is imported, so
those are this process's, not the request's: a command that needs other `JAX_*` values must
run as a real process (`subprocess`), not through this server.

Used by `tests.helpers.run_cli`; not part of the library.
"""
import json
import os
import runpy
import signal
import sys
import tempfile
import time
import warnings

import absl.app  # noqa: F401  (the imports every command makes, done once)
import flax.nnx  # noqa: F401
import grain  # noqa: F401
import jax  # noqa: F401
import ml_collections  # noqa: F401
import optax  # noqa: F401
import orbax.checkpoint  # noqa: F401

# numpy's BLAS keeps a thread, which fork handles (Python 3.12 would warn on every fork).
warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks",
                        category=DeprecationWarning)


def _child(request: dict, out: int, err: int) -> None:
  """Becomes the command: never returns (SystemExit ends the interpreter as the command's
  own exit would)."""
  os.chdir(request["cwd"])
  os.environ.clear()
  os.environ.update(request["env"])
  null = os.open(os.devnull, os.O_RDONLY)
  for fd, target in ((null, 0), (out, 1), (err, 2)):
    os.dup2(fd, target)
  sys.stdin = open(0, closefd=False)
  sys.argv = [request["module"], *request["args"]]
  sys.path[0] = request["cwd"]
  runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
  sys.exit(0)


def _serve(request: dict) -> dict:
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
      _child(request, out.fileno(), err.fileno())
    deadline = time.monotonic() + request["timeout"]
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
      time.sleep(0.02)
    timed_out = done[0] == 0
    if timed_out:
      os.kill(pid, signal.SIGKILL)
      done = os.waitpid(pid, 0)
    answer = {"returncode": os.waitstatus_to_exitcode(done[1]), "timeout": timed_out}
    for name, f in (("stdout", out), ("stderr", err)):
      f.seek(0)
      answer[name] = f.read().decode(errors="replace")
  return answer


def main() -> None:
  for line in sys.stdin:
    print(json.dumps(_serve(json.loads(line))), flush=True)


if __name__ == "__main__":
  main()
