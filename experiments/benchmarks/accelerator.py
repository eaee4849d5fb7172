"""The accelerator check's measurements (entry point: experiments/accelerator_check.py).

Sizes:
- "accelerator" (default): the check for one H100 or H200, about 8 minutes. Train steps at
  width 768, 18 layers, 12 heads, SwiGLU width 2048 (the Transformer has about 127M
  parameters), bf16, batch 16 x 2048 tokens; the memory kernels at batch 8 x 2048 tokens,
  width 256 in 8 heads of 32 (the small configs' layout), depth-2 Titans memory.
- "tiny": the same sections at toy shapes, so that the script is tested on CPU.

Sections, in order (each one's result is written to the JSON as soon as it is measured):
- lm: the train step (`runtime.training`, the step of experiments.pretrain) of the
  Transformer, HOPE and Titans LMM on one device: tokens/s and model-FLOPs utilisation
  against the chip's bf16 peak (`runtime.performance.PEAK_FLOPS`; on CPU a same-process
  matmul); HOPE's and Titans' tokens/s as a share of the Transformer's.
- kernels: forward + backward of the Titans memory and of the self-modifying memory with
  kernel="xla" and kernel="pallas": seconds, the speed-up, and the largest difference
  between their gradients.
- memory_lm: the memory LM's train step with 1024^2 product-key slots (tiny: 16^2).
- sharded: one train step of the Transformer on all local devices against one device.

Targets (GPU): Transformer >= 40% bf16 MFU, HOPE >= 0.5x the Transformer's tokens/s.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.benchmarks import sharded_step, titans_memory, train_step
from experiments.benchmarks.timing import compiled_bytes, interleaved_medians
from hope.neural_memory import NeuralMemory
from hope.self_modifying import SelfModifyingMemory

SECTIONS = ("lm", "kernels", "memory_lm", "sharded")
LM_MODELS = ("transformer", "hope", "titans_lmm")
TARGETS = dict(transformer_mfu=0.40, hope_relative_tokens_per_sec=0.5)
SIZES = {
    "accelerator": dict(
        model=dict(dim=768, num_layers=18, num_heads=12, mlp_dim=2048, dtype="bfloat16"),
        batch_size=16, seq_len=2048, steps_per_run=3, warmup=1, runs=3,
        memory=dict(batch=8, seq_len=2048, dim=256, heads=8), memory_slots=1024 ** 2,
        memory_model=dict(key_dim=512, top_k=32, memory_heads=4, memory_layers=(4, 12))),
    "tiny": dict(
        model=dict(dim=32, num_layers=1, num_heads=2, mlp_dim=64, dtype="float32"),
        batch_size=8, seq_len=32, steps_per_run=1, warmup=0, runs=1,
        memory=dict(batch=2, seq_len=32, dim=16, heads=2), memory_slots=16 ** 2,
        memory_model=dict(key_dim=16, top_k=4, memory_heads=2, memory_layers=(0,))),
}


def lm_steps(size: dict) -> dict:
  """Train-step rows of LM_MODELS at the size's shape, with HOPE/Titans relative to the
  Transformer."""
  result = train_step.run([f"{name}:small" for name in LM_MODELS], seq_len=size["seq_len"],
                          batch_size=size["batch_size"], warmup=size["warmup"],
                          runs=size["runs"], steps_per_run=size["steps_per_run"],
                          overrides=size["model"])
  rows = {row["model"].split(":")[0]: row for row in result["rows"]}
  transformer = rows["transformer"]["tokens_per_sec"]
  for row in rows.values():
    row["relative_tokens_per_sec"] = row["tokens_per_sec"] / transformer
  return rows


def kernels(size: dict) -> dict:
  """For each memory, the forward + backward with kernel='xla' and 'pallas'."""
  shape = tuple(size["memory"][k] for k in ("batch", "seq_len", "dim"))
  heads = size["memory"]["heads"]
  builders = {
      "titans_memory": lambda kernel: NeuralMemory(shape[2], num_heads=heads, depth=2,
                                                   kernel=kernel, rngs=nnx.Rngs(0)),
      "self_modifying": lambda kernel: SelfModifyingMemory(shape[2], num_heads=heads,
                                                           kernel=kernel, rngs=nnx.Rngs(0)),
  }
  keys = jax.random.split(jax.random.key(0))
  x, target = (jax.random.normal(k, shape) for k in keys)
  rows = {}
  for name, build in builders.items():
    calls, grads, info = {}, {}, {}
    for kernel in ("xla", "pallas"):
      start = time.perf_counter()
      compiled, params = titans_memory.compiled_gradient(build(kernel), shape)
      info[kernel] = dict(compile_seconds=time.perf_counter() - start,
                          compiled_bytes=compiled_bytes(compiled))
      calls[kernel] = lambda compiled=compiled, params=params: compiled(params, x, target)
      grads[kernel] = calls[kernel]()
    seconds = interleaved_medians(calls, size["warmup"], size["runs"])
    difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                     zip(jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["pallas"])))
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(grads["xla"]))
    rows[name] = dict(seconds=seconds, pallas_speedup=seconds["xla"] / seconds["pallas"],
                      max_gradient_difference=difference, max_gradient=scale, **info)
  return dict(shape=dict(size["memory"]), rows=rows)


def memory_lm_step(size: dict) -> dict:
  """The memory LM's train step with the size's number of slots."""
  overrides = dict(size["model"], num_slots=size["memory_slots"], **size["memory_model"])
  result = train_step.run(["memory_lm:small"], seq_len=size["seq_len"],
                          batch_size=size["batch_size"], warmup=size["warmup"],
                          runs=size["runs"], steps_per_run=size["steps_per_run"],
                          overrides=overrides)
  return dict(num_slots=size["memory_slots"], **result["rows"][0])


def sharded(size: dict) -> dict:
  """One Transformer step on every local device against one device."""
  devices = jax.device_count()
  meshes = (dict(data=1),) + ((dict(data=devices),) if devices > 1 else ())
  return sharded_step.run("transformer:small", meshes=meshes, overrides=size["model"],
                          batch_size=size["batch_size"], seq_len=size["seq_len"],
                          warmup=size["warmup"], runs=size["runs"])


MEASURE = dict(lm=lm_steps, kernels=kernels, memory_lm=memory_lm_step, sharded=sharded)


def verdicts(sections: dict) -> dict:
  """Each target met or not, where its section ran (on a GPU or TPU only: on CPU the MFU is
  against a measured matmul, not a chip's peak)."""
  lm = sections.get("lm")
  if not lm or jax.default_backend() == "cpu":
    return {}
  return dict(transformer_mfu=lm["transformer"]["utilisation"] >= TARGETS["transformer_mfu"],
              hope_relative_tokens_per_sec=(lm["hope"]["relative_tokens_per_sec"]
                                            >= TARGETS["hope_relative_tokens_per_sec"]))


def describe() -> dict:
  device = jax.local_devices()[0]
  return dict(platform=device.platform, device_kind=device.device_kind,
              device_count=jax.device_count(), jax=jax.__version__,
              numpy=np.__version__)
