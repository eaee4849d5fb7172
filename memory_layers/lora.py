"""LoRA (Hu et al. 2021, eq. 3) on the LM's Dense matrices, the SMF paper's baseline.

A Dense kernel W (input dims I, output dims O, flattened to [prod I, prod O]) becomes

    W' = W + (alpha / r) A B,    A [prod I, r] ~ N(0, 1/prod I),  B [r, prod O] = 0,

so the model is unchanged at step 0. Only A and B train; W stays frozen. Targets are the
Dense modules' attribute names (`query`, `key`, `value`, `out` in attention; `gate`, `up`,
`down` in SwiGLU MLPs; `unembed`).
"""
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hope.layers import Dense
from hope.optimizers.tree_paths import path_name

ATTENTION = ("query", "key", "value", "out")
MLP = ("gate", "up", "down")


def lora_targets(model: nnx.Module, targets: Sequence[str]) -> dict:
  """{path of a targeted Dense kernel in the pure parameter dict: its number of input dims}."""
  found = {}
  for path, module in nnx.iter_modules(model):
    if isinstance(module, Dense) and path and path[-1] in targets:
      found[tuple(path) + ("kernel",)] = module.n_in
  if not found:
    raise ValueError(f"LoRA targets {list(targets)} match no Dense matrix of the model "
                     f"(names: {sorted(set(ATTENTION + MLP + ('unembed',)))})")
  return found


def _get(tree: dict, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def init_lora(params: dict, targets: dict, rank: int, key: jax.Array) -> dict:
  """{'/'.join(path): {'a': A, 'b': B}} for each target, B zero (eq. 3's initialisation)."""
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
  adapters = {}
  for k, (path, n_in) in zip(jax.random.split(key, len(targets)), sorted(targets.items())):
    shape = _get(params, path).shape
    fan_in, fan_out = math.prod(shape[:n_in]), math.prod(shape[n_in:])
    adapters[path_name(path)] = dict(
        a=jax.random.normal(k, (fan_in, rank), jnp.float32) / math.sqrt(fan_in),
        b=jnp.zeros((rank, fan_out), jnp.float32))
  return adapters


def merge_lora(params: dict, adapters: dict, alpha: float) -> dict:
  """params with each targeted W replaced by W + (alpha / r) A B (same shape and dtype)."""

  def update(path, w):
    name = path_name(path)
    if name not in adapters:
      return w
    a, b = adapters[name]["a"], adapters[name]["b"]
    delta = (alpha / a.shape[1]) * (a @ b)
    return w + delta.reshape(w.shape).astype(w.dtype)

  return jax.tree_util.tree_map_with_path(update, params)
