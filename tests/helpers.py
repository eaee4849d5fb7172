"""Shared test helpers: tiny configs and running the CLIs as a user would."""
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


def run_cli(module: str, *args: str, devices: int = 8, timeout: float = 240,
            env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs `python -m module args` in a fresh process with `devices` fake CPU devices."""
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices))
  full_env.update(env or {})
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


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

