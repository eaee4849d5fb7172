"""Suite `memory`: the Titans memory's chunked path against its per-token reference.

For each head layout (head_dim = dim / heads), a jitted forward+backward (gradients of
sum(y * target) with respect to every parameter of `NeuralMemory`, depth-2 memory,
momentum and decay on) at batch x seq tokens of width dim, for the per-token reference
(chunk size 1, the plain recurrence) and the chunked dual form at each chunk size. Model
FLOP/s use `flops_per_token` (x3 for forward+backward); memory is the compiled
executable's (arguments + outputs + temporaries - aliased).

A third row, "projections only", runs everything the two share (q/k/v projections and short
convolutions, the gates, the output norm, gate and projection) with the memory read-out
replaced by q: reference / projections-only bounds the speed-up any chunked form can reach.

The reference runs as a `lax.scan` over `REFERENCE_SEGMENT`-token pieces with the state
carried and each piece rematerialised (exact, by the streaming contract): in one piece its
backward pass would keep every token's memory weights. That one-piece program is compiled
(never run) to report the memory it would need.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from experiments.benchmarks.timing import compiled_bytes, interleaved_medians, load_average
from hope.neural_memory import NeuralMemory

REFERENCE_SEGMENT = 32
DEPTH, EXPANSION = 2, 2
GIB = 2 ** 30


def build(dim: int, heads: int, chunk_size: int, implementation: str) -> NeuralMemory:
  return NeuralMemory(dim, num_heads=heads, depth=DEPTH, expansion=EXPANSION,
                      chunk_size=chunk_size, implementation=implementation, rngs=nnx.Rngs(0))


def projections_only(module: NeuralMemory, x: jax.Array) -> jax.Array:
  """`module(x)` with the memory read-out M_t(q_t) replaced by q_t (the shared per-token work)."""
  mask = jnp.ones(x.shape[:2], bool)
  q, k, v, _ = module._keys_values_queries(x, module.init_state(x.shape[0]).conv, mask)
  gates = module.gates(x, mask)
  y = q + sum(g[..., None] for g in gates[:3])  # keep every projection in the graph
  return module._output(x, y)


def compiled_gradient(memory: NeuralMemory, shape: tuple[int, int, int], segment: int = 0,
                      forward=None):
  """(compiled grad of sum(y * target) over all parameters, params); `segment` > 0 scans
  rematerialised pieces of that many tokens."""
  graphdef = nnx.graphdef(memory)
  params = nnx.to_pure_dict(nnx.state(memory))

  def loss(params, x, target):
    module = nnx.merge(graphdef, params)
    if forward is not None:
      return jnp.sum(forward(module, x) * target)
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

  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.jit(jax.grad(loss)).lower(params, x, x).compile(), params


def run(*, batch: int = 8, seq_len: int = 2048, dim: int = 256, heads=(1, 2, 4, 8),
        chunk_sizes=(16, 64, 128), warmup: int = 1, runs: int = 3) -> dict:
  """Rows per head layout and implementation: median seconds, speed-up, compiled GiB."""
  for h in heads:
    if h <= 0 or dim % h:
      raise ValueError(f"memory heads {h} does not divide the width {dim}")
  if seq_len % REFERENCE_SEGMENT:
    raise ValueError(f"memory seq_len {seq_len} must be a multiple of {REFERENCE_SEGMENT}")
  shape = (batch, seq_len, dim)
  keys = jax.random.split(jax.random.key(0))
  x = jax.random.normal(keys[0], shape)
  target = jax.random.normal(keys[1], shape)
  rows = []
  for h in heads:
    one_piece, _ = compiled_gradient(build(dim, h, 1, "reference"), shape)
    one_piece_bytes = compiled_bytes(one_piece)
    del one_piece
    variants = {"reference, b=1": (build(dim, h, 1, "reference"), REFERENCE_SEGMENT)}
    variants.update({f"chunked, b={b}": (build(dim, h, b, "chunked"), 0) for b in chunk_sizes})
    variants["projections only"] = (build(dim, h, 1, "chunked"), -1)
    calls, info = {}, {}
    for name, (memory, segment) in variants.items():
      if segment < 0:
        compiled, params = compiled_gradient(memory, shape, forward=projections_only)
      else:
        compiled, params = compiled_gradient(memory, shape, segment)
      calls[name] = lambda compiled=compiled, params=params: compiled(params, x, target)
      flops = 3 * memory.flops_per_token(seq_len) * batch * seq_len if segment >= 0 else None
      info[name] = (compiled_bytes(compiled), flops)
    seconds = interleaved_medians(calls, warmup, runs)
    for name, s in seconds.items():
      memory_bytes, flops = info[name]
      rows.append(dict(heads=h, head_dim=dim // h, implementation=name, seconds=s,
                       speedup=seconds["reference, b=1"] / s,
                       model_flops_per_sec=flops / s if flops else None,
                       compiled_bytes=memory_bytes, reference_one_piece_bytes=one_piece_bytes,
                       load=load_average()))
  return dict(batch=batch, seq_len=seq_len, dim=dim, depth=DEPTH, expansion=EXPANSION,
              reference_segment=REFERENCE_SEGMENT, warmup=warmup, runs=runs, rows=rows)


def table(result: dict) -> str:
  lines = [f"NeuralMemory forward+backward, batch {result['batch']} x seq {result['seq_len']}, "
           f"width {result['dim']}, depth {result['depth']} x{result['expansion']}; reference "
           f"in remat'd pieces of {result['reference_segment']} tokens",
           f"{'heads x dim':<13}{'implementation':<17}{'seconds':>9}{'speed-up':>10}"
           f"{'GFLOP/s':>9}{'compiled GiB':>14}{'ref. one piece GiB':>20}{'load':>6}"]
  for r in result["rows"]:
    flops = r["model_flops_per_sec"]
    lines.append(f"{r['heads']:>3} x {r['head_dim']:<7}{r['implementation']:<17}"
                 f"{r['seconds']:>9.3f}{r['speedup']:>9.1f}x"
                 + (f"{flops / 1e9:>9.1f}" if flops else f"{'-':>9}")
                 + f"{r['compiled_bytes'] / GIB:>14.3f}{r['reference_one_piece_bytes'] / GIB:>20.1f}"
                 f"{r['load']:>6.1f}")
  return "\n".join(lines)
