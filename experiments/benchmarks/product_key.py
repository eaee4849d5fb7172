"""Suite `pkm`: product-key memory time per token as N grows, and per-device table bytes.

1. Time: on the default device, per token, the jitted forward pass, forward+backward with
   respect to all parameters, forward+backward with the value table frozen, and
   forward+backward with a row-sparse table (`memory_layers.row_sparse`: every other
   parameter's gradient, the table's gradient as (indices, weights, dL/dy), and a row-sparse
   SGD step scatter-added into the donated table), for each number of slots N. The frozen
   variant isolates what the dense [N, value_dim] gradient of the table costs (a zero table
   of N rows that the reads scatter-add into, written in full every step); the row-sparse
   one trains the table without it; the rest grows with sqrt(N) (sub-key scores and top-k)
   and with the cache misses of reading rows from a larger table, while the read's FLOPs do
   not grow.
2. Memory (8 devices needed): the forward+backward step of a `memory_slots`-slot table
   compiled from abstract shapes (nothing allocated) in three layouts of the table, with
   the table's shard bytes and the compiled executable's per-device bytes.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments.benchmarks.timing import interleaved_medians, load_average
from hope.sharding import logical_to_mesh_spec, param_shardings
from memory_layers import ProductKeyMemory, ValuePool
from memory_layers import row_sparse

AXES = ("data", "fsdp", "tensor")
BASE_RULES = (("batch", ("data", "fsdp")), ("embed", None), ("heads", None))
LAYOUTS = {  # name: (mesh shape (data, fsdp, tensor), rules for the table's axes)
    "rows over fsdp=8": ((1, 8, 1), (("slots", "fsdp"), ("value", None))),
    "columns over tensor=8": ((1, 1, 8), (("slots", None), ("value", "tensor"))),
    "rows x columns, fsdp=2 x tensor=4": ((1, 2, 4), (("slots", "fsdp"), ("value", "tensor"))),
}
DEFAULT_SIZES = (128 ** 2, 256 ** 2, 512 ** 2, 1024 ** 2)
VARIANTS = ("forward", "forward+backward", "forward+backward, table frozen",
            "forward+backward, row-sparse table")
SPARSE_LR = 1e-3  # the row-sparse variant's SGD step on the table


@dataclasses.dataclass(frozen=True)
class Shape:
  """The layer (Memory+: gated output, query norm) and the step's tokens."""
  embed: int = 512
  value_dim: int = 512
  heads: int = 4
  key_dim: int = 256
  top_k: int = 32
  batch: int = 8
  seq_len: int = 256


def build(shape: Shape, num_slots: int, rules=None) -> ProductKeyMemory:
  rngs = nnx.Rngs(0)
  return ProductKeyMemory(shape.embed, ValuePool(num_slots, shape.value_dim, rngs=rngs),
                          num_heads=shape.heads, key_dim=shape.key_dim, top_k=shape.top_k,
                          gated_output=True, query_norm=True, sharding_rules=rules, rngs=rngs)


def loss_fn(graphdef):
  def loss(params, x, target):
    return jnp.sum(nnx.merge(graphdef, params)(x) * target)
  return loss


def check_sizes(sizes) -> None:
  for n in sizes:
    if n <= 0 or math.isqrt(n) ** 2 != n:
      raise ValueError(f"{n} slots is not a perfect square n*n")


def table_memory(shape: Shape, num_slots: int, mesh_shape, table_rules) -> dict:
  """Per-device bytes of the compiled forward+backward step with the table sharded."""
  rules = BASE_RULES + table_rules
  mesh = jax.make_mesh(mesh_shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=jax.devices()[:8])
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build(shape, num_slots, rules)))
  params = nnx.to_pure_dict(state)
  shardings = param_shardings(state, mesh, rules)
  tokens = NamedSharding(mesh, logical_to_mesh_spec(P("batch"), rules, AXES))
  x = jax.ShapeDtypeStruct((shape.batch, shape.seq_len, shape.embed), jnp.float32)
  with jax.set_mesh(mesh):
    compiled = jax.jit(jax.grad(loss_fn(graphdef)), in_shardings=(shardings, tokens, tokens)
                       ).lower(params, x, x).compile()
  table = params["values"]["table"]
  stats = compiled.memory_analysis()
  grad_sharding = compiled.output_shardings["values"]["table"]
  itemsize = table.dtype.itemsize
  return dict(
      table_bytes=table.size * itemsize,
      shard_bytes=math.prod(shardings["values"]["table"].shard_shape(table.shape)) * itemsize,
      gradient_shard_bytes=math.prod(grad_sharding.shard_shape(table.shape)) * itemsize,
      argument_bytes=stats.argument_size_in_bytes, output_bytes=stats.output_size_in_bytes,
      temporary_bytes=stats.temp_size_in_bytes)


def step_calls(shape: Shape, num_slots: int) -> dict:
  """{variant: call}: the jitted forward, forward+backward, forward+backward with the table
  frozen, and forward+backward with a row-sparse table update, on fixed random inputs."""
  graphdef, state = nnx.split(build(shape, num_slots))
  params = nnx.to_pure_dict(state)
  keys = jax.random.split(jax.random.key(1))
  x = jax.random.normal(keys[0], (shape.batch, shape.seq_len, shape.embed))
  target = jax.random.normal(keys[1], x.shape)
  loss = loss_fn(graphdef)

  def grads_without_table(params, x, target):
    table = params["values"]["table"]
    rest = {k: v for k, v in params.items() if k != "values"}
    return jax.grad(lambda rest: loss(dict(rest, values={"table": table}), x, target))(rest)

  functions = {"forward": loss, "forward+backward": jax.grad(loss),
               "forward+backward, table frozen": grads_without_table}
  calls = {}
  for name, fn in functions.items():
    compiled = jax.jit(fn).lower(params, x, target).compile()
    calls[name] = lambda compiled=compiled: compiled(params, x, target)

  path = ("values", "table")
  rest, tables = row_sparse.split_tables(params, [path])

  def sparse_step(table, rest, x, target):
    """Other parameters' gradients, and the table after a row-sparse SGD step."""
    merged = row_sparse.merge_tables(rest, {path: table})
    _, grads, reads = row_sparse.value_and_grad(
        lambda model, x, target: jnp.sum(model(x) * target), graphdef, merged, x, target)
    # after=grads: update the table in place only once the backward pass has read it.
    return grads, row_sparse.sgd(table, reads[path], SPARSE_LR, after=grads)

  # The table is donated and updated in place; each call passes on the last call's table.
  held = {"table": tables[path] + 0}
  compiled = jax.jit(sparse_step, donate_argnums=0).lower(held["table"], rest, x,
                                                          target).compile()

  def sparse_call():
    grads, held["table"] = compiled(held["table"], rest, x, target)
    return grads, held["table"]

  calls["forward+backward, row-sparse table"] = sparse_call
  return calls


def run(*, sizes=DEFAULT_SIZES, memory_slots: int | None = 1024 ** 2, shape: Shape = Shape(),
        warmup: int = 2, runs: int = 5) -> dict:
  """Time rows per N (microseconds per token; rounds interleave the sizes) and, with 8
  devices and `memory_slots`, memory rows per table layout."""
  check_sizes(list(sizes) + ([memory_slots] if memory_slots else []))
  calls = {(n, name): call for n in sizes for name, call in step_calls(shape, n).items()}
  seconds = interleaved_medians(calls, warmup, runs)
  tokens = shape.batch * shape.seq_len
  load = load_average()
  time_rows = [dict(slots=n, **{name: 1e6 * seconds[n, name] / tokens for name in VARIANTS},
                    load=load) for n in sizes]
  memory_rows, note = [], None
  if memory_slots and jax.device_count() >= 8:
    memory_rows = [dict(layout=name, slots=memory_slots,
                        **table_memory(shape, memory_slots, mesh_shape, rules))
                   for name, (mesh_shape, rules) in LAYOUTS.items()]
  elif memory_slots:
    note = f"memory analysis skipped: it needs 8 devices, {jax.device_count()} exist"
  return dict(shape=dataclasses.asdict(shape), tokens_per_step=tokens, warmup=warmup, runs=runs,
              rows=time_rows, memory_rows=memory_rows, note=note)


def table(result: dict) -> str:
  s = result["shape"]
  lines = [f"Product-key memory, {result['tokens_per_step']} tokens per step, embed {s['embed']}, "
           f"value {s['value_dim']}, {s['heads']} heads x top-{s['top_k']}, key_dim "
           f"{s['key_dim']}; microseconds per token",
           f"{'slots N':>9}{'forward':>10}{'fwd+bwd':>10}{'fwd+bwd, table frozen':>23}"
           f"{'fwd+bwd, row-sparse table':>27}{'load':>6}"]
  rows = result["rows"]
  for r in rows:
    lines.append(f"{r['slots']:>9}{r['forward']:>10.2f}{r['forward+backward']:>10.2f}"
                 f"{r['forward+backward, table frozen']:>23.2f}"
                 f"{r.get('forward+backward, row-sparse table', float('nan')):>27.2f}"
                 f"{r['load']:>6.1f}")
  if len(rows) > 1:
    lines.append(f"N = {rows[-1]['slots']} / N = {rows[0]['slots']}: " + ", ".join(
        f"{k} {rows[-1][k] / rows[0][k]:.2f}x" for k in VARIANTS if k in rows[0]))
  mib = 2 ** 20
  for m in result["memory_rows"]:
    lines.append(f"{m['layout']:34s} N={m['slots']}: table {m['table_bytes'] / mib:.0f} MiB, "
                 f"per device: shard {m['shard_bytes'] / mib:.1f}, gradient shard "
                 f"{m['gradient_shard_bytes'] / mib:.1f}, arguments {m['argument_bytes'] / mib:.1f}, "
                 f"outputs {m['output_bytes'] / mib:.1f}, temporaries "
                 f"{m['temporary_bytes'] / mib:.1f} MiB")
  if result["note"]:
    lines.append(result["note"])
  return "\n".join(lines)
