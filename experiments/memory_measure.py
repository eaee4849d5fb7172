"""Titans neural memory measurements: chunked vs per-token speed, and the chunked path's memory.

  python -m experiments.memory_measure

For each head layout in --heads (head_dim = dim / heads), a jitted forward+backward
(gradients with respect to every parameter of `NeuralMemory`) at --batch x --seq_len tokens
of width --dim, for the per-token reference at chunk size 1 (the plain recurrence) and the
chunked dual form at each of --chunk_sizes. Each program is compiled ahead of time; the
best of --repeats runs is reported (the machine may be shared: the minimum is the least
disturbed run), with model FLOP/s from `flops_per_token` (x3 for forward+backward) and the
compiled executable's memory analysis (arguments + outputs + temporaries - aliased).

The reference runs as a `lax.scan` over --reference_segment-token pieces with the state
carried and each piece rematerialised (exact, by the streaming contract): in one piece its
backward pass would keep every token's memory weights; the line "reference in one piece"
gives that program's compiled size (compiled, never run).
"""
import time

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from experiments import cli
from hope.neural_memory import NeuralMemory

BATCH = flags.DEFINE_integer("batch", 8, "Sequences per step.")
SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "Tokens per sequence.")
DIM = flags.DEFINE_integer("dim", 256, "Model width.")
HEADS = flags.DEFINE_list("heads", ["1", "4"], "Memory head counts (head_dim = dim / heads).")
DEPTH = flags.DEFINE_integer("depth", 2, "Memory MLP depth.")
EXPANSION = flags.DEFINE_integer("expansion", 2, "Memory MLP hidden width / head_dim.")
CHUNK_SIZES = flags.DEFINE_list("chunk_sizes", ["16", "64"], "Chunk sizes of the chunked path.")
REFERENCE_SEGMENT = flags.DEFINE_integer("reference_segment", 32,
                                         "Tokens per rematerialised piece of the reference.")
REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs of each chunked program (best is kept).")
REFERENCE_REPEATS = flags.DEFINE_integer("reference_repeats", 2, "Timed runs of the reference.")

GIB = 2 ** 30


def build(chunk_size: int, implementation: str, heads: int) -> NeuralMemory:
  return NeuralMemory(DIM.value, num_heads=heads, depth=DEPTH.value, expansion=EXPANSION.value,
                      chunk_size=chunk_size, implementation=implementation, rngs=nnx.Rngs(0))


def compiled_gradient(memory: NeuralMemory, segment: int = 0):
  """Compiled grad of sum(y * target) over all parameters; `segment` > 0 scans remat'd pieces."""
  graphdef = nnx.graphdef(memory)
  params = nnx.to_pure_dict(nnx.state(memory))

  def loss(params, x, target):
    module = nnx.merge(graphdef, params)
    if not segment:
      return jnp.sum(module(x)[0] * target)
    pieces = lambda a: jnp.moveaxis(a.reshape(a.shape[0], -1, segment, a.shape[-1]), 1, 0)

    @jax.checkpoint
    def piece(state, inputs):
      x_piece, target_piece = inputs
      y, state = nnx.merge(graphdef, params)(x_piece, state)
      return state, jnp.sum(y * target_piece)

    _, sums = jax.lax.scan(piece, module.init_state(x.shape[0]), (pieces(x), pieces(target)))
    return jnp.sum(sums)

  x = jax.ShapeDtypeStruct((BATCH.value, SEQ_LEN.value, DIM.value), jnp.float32)
  return jax.jit(jax.grad(loss)).lower(params, x, x).compile(), params


def total_bytes(compiled) -> int:
  stats = compiled.memory_analysis()
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
          - stats.alias_size_in_bytes)


def best_seconds(compiled, repeats: int, *args) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    chunk_sizes = [int(c) for c in CHUNK_SIZES.value]
    head_counts = [int(h) for h in HEADS.value]
  except ValueError as e:
    raise cli.UsageError(f"--chunk_sizes/--heads must be integers: {e}") from e
  for heads in head_counts:
    if heads <= 0 or DIM.value % heads:
      raise cli.UsageError(f"--heads: {heads} does not divide --dim={DIM.value}")
  if SEQ_LEN.value % REFERENCE_SEGMENT.value:
    raise cli.UsageError(f"--reference_segment={REFERENCE_SEGMENT.value} must divide "
                         f"--seq_len={SEQ_LEN.value}")
  if min(REPEATS.value, REFERENCE_REPEATS.value) < 1:
    raise cli.UsageError("--repeats and --reference_repeats must be >= 1")

  batch, seq, dim = BATCH.value, SEQ_LEN.value, DIM.value
  keys = jax.random.split(jax.random.key(0))
  x = jax.random.normal(keys[0], (batch, seq, dim))
  target = jax.random.normal(keys[1], x.shape)
  print(f"Forward+backward of NeuralMemory on {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}), batch {batch} x seq {seq}, dim {dim}, memory depth "
        f"{DEPTH.value} x{EXPANSION.value}, momentum and decay on; best of {REPEATS.value} "
        f"(reference: {REFERENCE_REPEATS.value}) runs:", flush=True)
  for heads in head_counts:
    print(f" heads {heads} x head_dim {dim // heads}:", flush=True)
    one_piece, _ = compiled_gradient(build(1, "reference", heads))
    print(f"  reference in one piece would need {total_bytes(one_piece) / GIB:.1f} GiB; "
          f"timed in remat'd pieces of {REFERENCE_SEGMENT.value} tokens", flush=True)
    del one_piece
    runs = [("reference, b=1", build(1, "reference", heads), REFERENCE_SEGMENT.value,
             REFERENCE_REPEATS.value)]
    runs += [(f"chunked, b={b}", build(b, "chunked", heads), 0, REPEATS.value)
             for b in chunk_sizes]
    seconds = {}
    for name, memory, segment, repeats in runs:
      compiled, params = compiled_gradient(memory, segment)
      seconds[name] = best_seconds(compiled, repeats, params, x, target)
      flops = 3 * memory.flops_per_token(seq) * batch * seq
      line = (f"  {name:15s} {seconds[name]:8.3f} s  {flops / seconds[name] / 1e9:6.1f} model "
              f"GFLOP/s  compiled {total_bytes(compiled) / GIB:6.3f} GiB")
      if name != "reference, b=1":
        line += f"  {seconds['reference, b=1'] / seconds[name]:5.1f}x faster than the reference"
      print(line, flush=True)


if __name__ == "__main__":
  cli.run(main)
