"""Shared test helpers: tiny configs and running the CLIs as a user would."""
import atexit
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax

from experiments.configs import transformer
from tests.xla_test_flags import xla_flags

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  """The transformer:tiny config shrunk further so a run takes seconds."""
  config = transformer.get_config("tiny")
  config.update(dict(steps=12, batch_size=8, seq_len=32, log_every=4, checkpoint_every=4,
                     warmup_steps=2, eval_batches=2))
  config.model.update(dict(dim=32, num_layers=2, num_heads=4, mlp_dim=64))
  return override(config, overrides)


def override(config, overrides: dict):
  """Sets dotted keys ("optimizer.kwargs.eps": 1e-3) of `config` in place; returns it."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def run_cli(module: str, *args: str, devices: int = 8,
            timeout: float = 240) -> subprocess.CompletedProcess:
  """Runs `python -m module args` in a fresh process with `devices` fake CPU devices: a child
  of this test process's `tests.cli_server`, which has the libraries imported already."""
  request = dict(module=module, args=list(args), cwd=str(ROOT), timeout=timeout,
                 env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices)))
  server = _cli_server()
  server.stdin.write(json.dumps(request) + "\n")
  server.stdin.flush()
  answer = json.loads(server.stdout.readline())
  if answer["timeout"]:
    raise subprocess.TimeoutExpired([module, *args], timeout, answer["stdout"], answer["stderr"])
  return subprocess.CompletedProcess([module, *args], answer["returncode"], answer["stdout"],
                                     answer["stderr"])


@functools.cache
def _cli_server() -> subprocess.Popen:
  """This process's `tests.cli_server`, started on first use, ended with this process."""
  server = subprocess.Popen([sys.executable, "-m", "tests.cli_server"], cwd=ROOT, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  atexit.register(server.kill)
  return server


TINY_FLAGS = ("--config=experiments/configs/transformer.py:tiny", "--config.steps=12",
              "--config.seq_len=32", "--config.model.dim=32", "--config.model.mlp_dim=64",
              "--config.model.num_layers=2", "--config.batch_size=8",
              "--config.log_every=4", "--config.checkpoint_every=4", "--config.warmup_steps=2",
              "--config.eval_batches=2")


def fast_and_reference(loss, params):
  """((out, grads) of the fast path, (out, grads) of the reference) for
  `loss(params, fast) -> (scalar, out)`, each jitted once: the pair a fast-path test compares."""
  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, out), grads = value_and_grad(params, True)
  (_, out_ref), grads_ref = value_and_grad(params, False)
  return (out, grads), (out_ref, grads_ref)

