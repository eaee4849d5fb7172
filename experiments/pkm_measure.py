"""Memory-layer measurements: per-device value-table bytes and forward+backward time per token.

  python -m experiments.pkm_measure

1. Memory: compiles the forward+backward step of a `ProductKeyMemory` with a
   --memory_slots table (default 1M) on 8 host (CPU) devices, for three layouts of the
   table (rows over fsdp=8, columns over tensor=8, rows x columns over fsdp=2 x tensor=4),
   from abstract shapes only (nothing is allocated), and prints the table's shard bytes
   and the compiled executable's per-device argument / output / temporary bytes.
2. Time: on the default device, per token, the jitted forward pass, forward+backward with
   respect to all parameters, and forward+backward with the value table frozen, for each
   of --sizes: the median over --repeats rounds (after --warmup runs), each round timing
   every size once, so that load from other processes falls on all sizes alike.

The last column isolates what the dense [N, value_dim] gradient of the table costs: a
zero-initialised table of N rows that the reads scatter-add into, written in full every
step, so it grows with N. The rest grows with sqrt(N) (sub-key scores and top-k) and with
the cache misses of reading rows from a larger table; the flops of the read do not grow.
"""
import os

# Eight host devices for the memory analysis; set before jax creates its CPU backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from experiments import cli  # noqa: E402
from memory_layers import (ProductKeyMemory, ValuePool, logical_to_mesh_spec,  # noqa: E402
                           param_shardings)

SIZES = flags.DEFINE_list("sizes", ["16384", "65536", "262144", "1048576"],
                          "Numbers of slots N (perfect squares) to time.")
MEMORY_SLOTS = flags.DEFINE_integer("memory_slots", 1048576,
                                    "N for the 8-device memory analysis.")
EMBED = flags.DEFINE_integer("embed", 512, "Model width (input and output of the layer).")
VALUE_DIM = flags.DEFINE_integer("value_dim", 512, "Width of a value row.")
HEADS = flags.DEFINE_integer("heads", 4, "Query heads.")
KEY_DIM = flags.DEFINE_integer("key_dim", 256, "Query width per head (Memory+: embed / 2).")
TOP_K = flags.DEFINE_integer("top_k", 32, "Slots read per head.")
BATCH = flags.DEFINE_integer("batch", 8, "Sequences per step.")
SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per sequence.")
WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed runs before timing.")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs; the median is reported.")

AXES = ("data", "fsdp", "tensor")
BASE_RULES = (("batch", ("data", "fsdp")), ("embed", None), ("heads", None))
LAYOUTS = {  # name: (mesh shape (data, fsdp, tensor), rules for the table's axes)
    "rows over fsdp=8": ((1, 8, 1), (("slots", "fsdp"), ("value", None))),
    "columns over tensor=8": ((1, 1, 8), (("slots", None), ("value", "tensor"))),
    "rows x columns, fsdp=2 x tensor=4": ((1, 2, 4), (("slots", "fsdp"), ("value", "tensor"))),
}


def build(num_slots: int, rules=None) -> ProductKeyMemory:
  rngs = nnx.Rngs(0)
  return ProductKeyMemory(EMBED.value, ValuePool(num_slots, VALUE_DIM.value, rngs=rngs),
                          num_heads=HEADS.value, key_dim=KEY_DIM.value, top_k=TOP_K.value,
                          gated_output=True, query_norm=True, sharding_rules=rules, rngs=rngs)


def loss_fn(graphdef):
  def loss(params, x, target):
    return jnp.sum(nnx.merge(graphdef, params)(x) * target)
  return loss


def table_memory(num_slots: int, mesh_shape, table_rules) -> dict:
  """Per-device bytes of the compiled forward+backward step with the table sharded."""
  rules = BASE_RULES + table_rules
  mesh = jax.make_mesh(mesh_shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=jax.devices("cpu")[:8])
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build(num_slots, rules)))
  params = nnx.to_pure_dict(state)
  shardings = param_shardings(state, mesh, rules)
  tokens = NamedSharding(mesh, logical_to_mesh_spec(P("batch"), rules, AXES))
  x = jax.ShapeDtypeStruct((BATCH.value, SEQ_LEN.value, EMBED.value), jnp.float32)
  with jax.set_mesh(mesh):
    compiled = jax.jit(jax.grad(loss_fn(graphdef)), in_shardings=(shardings, tokens, tokens)
                       ).lower(params, x, x).compile()
  table = params["values"]["table"]
  stats = compiled.memory_analysis()
  grad_sharding = compiled.output_shardings["values"]["table"]
  return dict(
      table=table.size * table.dtype.itemsize,
      shard=math.prod(shardings["values"]["table"].shard_shape(table.shape)) * table.dtype.itemsize,
      grad_shard=math.prod(grad_sharding.shard_shape(table.shape)) * table.dtype.itemsize,
      arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
      temporaries=stats.temp_size_in_bytes)


def step_functions(num_slots: int) -> tuple[dict, tuple]:
  """The jitted forward, forward+backward, and forward+backward with the table frozen."""
  graphdef, state = nnx.split(build(num_slots))
  params = nnx.to_pure_dict(state)
  keys = jax.random.split(jax.random.key(1))
  x = jax.random.normal(keys[0], (BATCH.value, SEQ_LEN.value, EMBED.value))
  target = jax.random.normal(keys[1], x.shape)
  loss = loss_fn(graphdef)

  def grads_without_table(params, x, target):
    table = params["values"]["table"]
    rest = {k: v for k, v in params.items() if k != "values"}
    return jax.grad(lambda rest: loss(dict(rest, values={"table": table}), x, target))(rest)

  variants = {
      "forward": jax.jit(loss),
      "forward+backward": jax.jit(jax.grad(loss)),
      "forward+backward, table frozen": jax.jit(grads_without_table),
  }
  return variants, (params, x, target)


def time_per_token(sizes) -> dict:
  """{N: {variant: median microseconds per token}}.

  Rounds interleave the sizes (each round times every variant at every N once), so load
  from other processes on a shared machine affects all sizes alike.
  """
  steps = {n: step_functions(n) for n in sizes}
  for variants, args in steps.values():
    for fn in variants.values():
      for _ in range(WARMUP.value):
        jax.block_until_ready(fn(*args))
  times = {n: {name: [] for name in variants} for n, (variants, _) in steps.items()}
  for _ in range(REPEATS.value):
    for n, (variants, args) in steps.items():
      for name, fn in variants.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times[n][name].append(time.perf_counter() - start)
  tokens = BATCH.value * SEQ_LEN.value
  return {n: {name: 1e6 * statistics.median(t) / tokens for name, t in row.items()}
          for n, row in times.items()}


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    sizes = [int(s) for s in SIZES.value]
  except ValueError as e:
    raise cli.UsageError(f"--sizes must be integers: {e}") from e
  for n in sizes + [MEMORY_SLOTS.value]:
    if n <= 0 or math.isqrt(n) ** 2 != n:
      raise cli.UsageError(f"--sizes/--memory_slots: {n} is not a perfect square n*n")
  mib = 2 ** 20

  print(f"Memory, N = {MEMORY_SLOTS.value} slots x {VALUE_DIM.value} values (f32), "
        f"forward+backward on 8 host devices, per device:")
  for name, (mesh_shape, table_rules) in LAYOUTS.items():
    m = table_memory(MEMORY_SLOTS.value, mesh_shape, table_rules)
    print(f"  {name:34s} table {m['table'] / mib:8.1f} MiB, shard {m['shard'] / mib:7.1f} MiB "
          f"(1/{m['table'] // m['shard']}), gradient shard {m['grad_shard'] / mib:7.1f} MiB | "
          f"arguments {m['arguments'] / mib:7.1f}, outputs {m['outputs'] / mib:7.1f}, "
          f"temporaries {m['temporaries'] / mib:7.1f} MiB")

  tokens = BATCH.value * SEQ_LEN.value
  print(f"\nTime per token on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{tokens} tokens per step, embed {EMBED.value}, value {VALUE_DIM.value}, "
        f"{HEADS.value} heads x top-{TOP_K.value}, key_dim {KEY_DIM.value}, "
        f"median of {REPEATS.value} interleaved rounds after {WARMUP.value} warm-up runs "
        "(microseconds):")
  rows = time_per_token(sizes)
  for n, row in rows.items():
    print(f"  N = {n:8d}  " + "  ".join(f"{k} {v:8.2f}" for k, v in row.items()))
  if len(sizes) > 1:
    small, large = min(sizes), max(sizes)
    for name in rows[small]:
      print(f"  {name}: N = {large} / N = {small}: {rows[large][name] / rows[small][name]:.2f}x")


if __name__ == "__main__":
  cli.run(main)
