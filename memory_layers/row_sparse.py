"""Row-sparse gradients and updates of memory-layer value tables.

A memory layer l reads its value table V [N, D] as (Lample et al. 2019, eq. 3; r runs over
the heads x top-k reads of token t)

    y_l[t] = sum_r w_l[t, r] V[i_l[t, r]],

so with g_l = dL/dy_l [tokens, D], the cotangent of the read, the table's gradient is

    dL/dV[n] = sum_l sum_t sum_r 1[i_l[t, r] = n] w_l[t, r] g_l[t]            (*)

summed over every layer l that reads V (Memory+'s shared pool, Berges et al. 2024). jax.grad
builds (*) as a dense [N, D] array: the VJP of the gather scatter-adds into a zero table of N
rows, and a dense optimizer then reads and writes all N rows. Here (*) is kept as its factors
(`TableReads`: i_l, w_l, g_l for every layer reading V) and applied by scatter-adding the
touched rows only, at a cost independent of N:

- `value_and_grad` runs the model once forward and once backward with every table read
  through `stop_gradient` plus a zero tap z_l added to y_l (`ReadTap`), so dL/dz_l = g_l comes
  out of the same backward pass as the other parameters' gradients. The slot weights w_l keep
  their ordinary gradient (queries and sub-keys train); the table gets none.
- `unique_rows`: (*) on the distinct rows touched, duplicates summed (jnp.unique with a static
  size; padding rows carry the out-of-range id N and zero gradient).
- `sgd`: V <- V - lr (*), scatter-added into V (donate it to update in place).
- `LazyAdamW`: Adam / AdamW on the touched rows only, described there.
- `RowSparseValueOptimizer`: a train-step optimizer with the tables on `LazyAdamW` and every
  other parameter on any optax rule.
"""
import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from memory_layers.product_key_memory import ProductKeyMemory
from memory_layers.product_keys import SlotLookup
from memory_layers.value_pool import ValueTable

Path = tuple  # keys into the pure parameter dict (`nnx.to_pure_dict`)


class ReadTap:
  """What a memory layer does with its read in row-sparse mode (`ProductKeyMemory.value_tap`).

  The layer reads through `stop_gradient(V)` and returns tap(y, lookup) = y + z, z = `zero`
  (a zero [batch, seq, value_dim] input whose gradient is g = dL/dy); the tap keeps the
  lookup (indices, and weights without their gradient) for (*). With `zero=None` it only
  records y's shape (used to size the zeros).
  """

  def __init__(self, zero: jax.Array | None):
    self.zero = zero
    self.lookup: SlotLookup | None = None
    self.shape: jax.ShapeDtypeStruct | None = None

  def __call__(self, y: jax.Array, lookup: SlotLookup) -> jax.Array:
    self.lookup = SlotLookup(*(jax.lax.stop_gradient(a) for a in lookup))
    self.shape = jax.ShapeDtypeStruct(y.shape, y.dtype)
    return y if self.zero is None else y + self.zero.astype(y.dtype)


class TableReads(NamedTuple):
  """The row-sparse gradient (*) of one value table: per layer reading it, the slots
  [batch, seq, heads, k], their weights (same shape) and the read's cotangent g
  [batch, seq, value_dim]."""
  indices: tuple
  weights: tuple
  cotangents: tuple


def get_path(tree, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: dict, path: Path, value) -> dict:
  """A copy of the nested dict `tree` with `value` at `path` (the dicts on the path copied)."""
  tree = dict(tree)
  tree[path[0]] = value if len(path) == 1 else set_path(tree[path[0]], path[1:], value)
  return tree


def table_paths(model: nnx.Module) -> list[Path]:
  """The paths of the model's value tables in `nnx.to_pure_dict(nnx.state(model))`: each
  table once, at the first path that reaches it (as `nnx.split` stores a shared pool)."""
  seen, paths = set(), []
  for path, node in nnx.iter_graph(model):
    if isinstance(node, ValueTable) and id(node) not in seen:
      seen.add(id(node))
      paths.append(tuple(path))
  return paths


def _layers_and_tables(model: nnx.Module) -> list[tuple[ProductKeyMemory, Path]]:
  """Each memory layer with the path of the table it reads."""
  path_of = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, ValueTable):
      path_of.setdefault(id(node), tuple(path))
  return [(m, path_of[id(m.values.table)]) for _, m in nnx.iter_modules(model)
          if isinstance(m, ProductKeyMemory)]


def split_tables(params: dict, paths: list[Path]) -> tuple[dict, dict]:
  """(params with None at the value tables, {path: table})."""
  rest = params
  for path in paths:
    rest = set_path(rest, path, None)
  return rest, {path: get_path(params, path) for path in paths}


def merge_tables(rest: dict, tables: dict) -> dict:
  """Inverse of `split_tables`."""
  for path, table in tables.items():
    rest = set_path(rest, path, table)
  return rest


def value_and_grad(loss_fn: Callable, graphdef: nnx.GraphDef, params: dict, *args,
                   has_aux: bool = False):
  """The loss, the gradients of all parameters but the value tables, and the tables'
  row-sparse gradients (*), from one forward and one backward pass.

  Args:
    loss_fn: (model, *args) -> loss (or (loss, aux) with has_aux), the model merged from
      graphdef and params.
    graphdef, params: the model, split (`nnx.split`; params as `nnx.to_pure_dict`).
  Returns:
    (loss or (loss, aux), grads, reads): grads has params' structure with None at the value
    tables; reads is {table path: TableReads}. No [N, value_dim] gradient is ever built.
  """
  model = nnx.merge(graphdef, params)
  paths = table_paths(model)
  layer_tables = [path for _, path in _layers_and_tables(model)]  # static: layer -> table
  rest, tables = split_tables(params, paths)

  def run(rest, zeros, tables, *args):
    model = nnx.merge(graphdef, merge_tables(rest, tables))
    layers = _layers_and_tables(model)
    taps = [ReadTap(z) for z in (zeros if zeros is not None else [None] * len(layers))]
    for (layer, _), tap in zip(layers, taps):
      layer.value_tap = tap
    out = loss_fn(model, *args)
    loss, aux = out if has_aux else (out, None)
    return loss, (aux, [t.lookup for t in taps], [t.shape for t in taps])

  # An abstract pass (tracing only) gives the reads' shapes, hence the zero taps'.
  _, (_, _, shapes) = jax.eval_shape(lambda r, t, *a: run(r, None, t, *a), rest, tables, *args)
  zeros = [jnp.zeros(s.shape, s.dtype) for s in shapes]
  (loss, (aux, lookups, _)), (grads, cotangents) = jax.value_and_grad(
      run, argnums=(0, 1), has_aux=True)(rest, zeros, tables, *args)
  reads = {}
  for path in paths:
    mine = [i for i, p in enumerate(layer_tables) if p == path]
    reads[path] = TableReads(tuple(lookups[i].indices for i in mine),
                             tuple(lookups[i].weights for i in mine),
                             tuple(cotangents[i] for i in mine))
  return ((loss, aux) if has_aux else loss), grads, reads


def _scan_reads(buffer: jax.Array, reads: TableReads, rows_of: Callable, scale) -> jax.Array:
  """buffer.at[rows_of(layer, indices)].add(scale * w g) over every read, as a scan over the
  heads * k reads of each layer (one [tokens, D] scatter per read, no [tokens, heads * k, D]
  intermediate)."""
  for layer, (indices, weights, g) in enumerate(zip(*reads)):
    batch, seq, heads, k = indices.shape
    flat = tuple(jnp.moveaxis(a.reshape(batch, seq, heads * k), -1, 0)
                 for a in (rows_of(layer, indices), weights))
    g = g.astype(buffer.dtype)

    def add(buffer, read, g=g):
      rows, w = read
      return buffer.at[rows].add((scale * w.astype(buffer.dtype))[..., None] * g,
                                 mode="drop"), None

    buffer, _ = jax.lax.scan(add, buffer, flat)
  return buffer


def densify(reads: TableReads, num_slots: int) -> jax.Array:
  """(*) as a dense [N, D] array (for tests and checks; this is what the sparse path avoids)."""
  dim = reads.cotangents[0].shape[-1]
  total = jnp.zeros((num_slots, dim), jnp.float32)
  for indices, weights, g in zip(*reads):
    contrib = weights[..., None] * g[:, :, None, None, :].astype(jnp.float32)
    total = total.at[indices.reshape(-1)].add(contrib.reshape(-1, dim))
  return total


def num_reads(reads: TableReads) -> int:
  return sum(i.size for i in reads.indices)


def unique_rows(reads: TableReads, num_slots: int, size: int | None = None):
  """(rows, grad): the distinct slots read, ascending, and (*) at them, duplicates summed.

  rows [size] int32 and grad [size, D] float32 with size = min(N, number of reads) unless
  given; when fewer distinct slots are read the rest of `rows` is N (out of range: scatters
  with mode="drop" skip it) with zero gradient.
  """
  size = size or min(num_slots, num_reads(reads))
  flat = jnp.concatenate([i.reshape(-1) for i in reads.indices])
  rows, inverse = jnp.unique(flat, size=size, fill_value=num_slots, return_inverse=True)
  inverse = inverse.reshape(-1)
  offsets = [0]
  for i in reads.indices:
    offsets.append(offsets[-1] + i.size)
  dim = reads.cotangents[0].shape[-1]
  grad = _scan_reads(jnp.zeros((size, dim), jnp.float32), reads,
                     lambda l, idx: inverse[offsets[l]:offsets[l + 1]].reshape(idx.shape), 1.0)
  return rows.astype(jnp.int32), grad


def read_counts(reads: TableReads, rows: jax.Array, token_mask: jax.Array | None = None
                ) -> jax.Array:
  """c(i) at `unique_rows`' rows [U] (int32): the reads of every layer that picked each row,
  those of tokens where token_mask [batch, seq] is 0 left out (as
  `access_stats.slot_access_counts` counts them over all N slots)."""
  counts = jnp.zeros(rows.shape, jnp.int32)
  for indices in reads.indices:
    ones = (jnp.ones(indices.shape, jnp.int32) if token_mask is None else
            jnp.broadcast_to((token_mask != 0).astype(jnp.int32)[:, :, None, None],
                             indices.shape))
    counts = counts + jax.ops.segment_sum(
        ones.reshape(-1), jnp.searchsorted(rows, indices.reshape(-1)),
        num_segments=rows.shape[0])
  return counts


def sgd(table: jax.Array, reads: TableReads, learning_rate, after=None) -> jax.Array:
  """V <- V - lr (*): every read's lr w g scatter-added into V (no [N, D] temporary when V's
  buffer is donated). Equal to dense SGD up to the order of the floating-point sums.

  after: a pytree computed from V that must be done before V changes (e.g. the gradients
  of the other parameters, whose backward pass re-reads V); see `zero_after`.
  """
  return _scan_reads(table, reads, lambda l, idx: idx, zero_after(after) - learning_rate)


def zero_after(tree) -> jax.Array:
  """A float32 zero that depends on every leaf of `tree` (0 for finite, inf or nan leaves).

  Adding it to the scale of an in-place table update makes the update come after all of
  `tree`. Without such a data dependency, XLA (CPU) copies a donated table twice when some
  read of it (here the backward pass's re-reads for the slot weights' gradient) is not an
  input of the update; an optimization barrier does not prevent that copy.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  total = sum(jnp.sum(x).astype(jnp.float32) for x in leaves)
  return 0.0 * jnp.where(jnp.isfinite(total), total, 0.0)


class LazyAdamState(NamedTuple):
  """count: the number of updates so far (every update counts, touched rows or not);
  mu, nu: the first and second moments, [N, D] like the table."""
  count: jax.Array
  mu: Any
  nu: Any


@dataclasses.dataclass(frozen=True)
class LazyAdamW:
  """Lazy ("sparse") Adam / AdamW on the rows a step touches, as torch.optim.SparseAdam.

  With G the row gradient (*) (duplicates summed, `unique_rows`), t the update count
  (t = 1 at the first update) and lr_t = learning_rate(t - 1) (a schedule, as in optax),
  every row n read this step gets

      m[n] <- b1 m[n] + (1 - b1) G[n]
      v[n] <- b2 v[n] + (1 - b2) G[n]^2
      V[n] <- V[n] - lr_t ( m[n] / (1 - b1^t) / (sqrt(v[n] / (1 - b2^t)) + eps)
                            + weight_decay V[n] )

  and every other row keeps its value and moments unchanged (so, unlike dense Adam, a row
  does not move on momentum alone, and its moments do not decay while unread). Bias
  correction uses the global update count t, as SparseAdam does with its per-parameter
  step (one step per update of the table), not a per-row count. weight_decay = 0 is
  SparseAdam's Adam; weight_decay > 0 is AdamW's decoupled decay, applied lazily (to touched
  rows only). With every row touched every step it equals optax.adamw (eps_root = 0).
  """
  learning_rate: Any  # float or schedule(count)
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0

  def init(self, table: jax.Array) -> LazyAdamState:
    zeros = jnp.zeros_like(table)
    return LazyAdamState(jnp.zeros((), jnp.int32), zeros, zeros)

  def update(self, table: jax.Array, state: LazyAdamState, rows: jax.Array,
             grad: jax.Array) -> tuple[jax.Array, LazyAdamState]:
    """(table, state) after one update from `unique_rows`' (rows, grad)."""
    return self.write(table, state, rows, *self.new_rows(table, state, rows, grad))

  def new_rows(self, table: jax.Array, state: LazyAdamState, rows: jax.Array,
               grad: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The updated (V, m, v) at `rows` [U] (float32 [U, D] each), nothing written yet."""
    lr = self.learning_rate(state.count) if callable(self.learning_rate) else self.learning_rate
    t = (state.count + 1).astype(jnp.float32)
    take = lambda a: jnp.take(a, rows, axis=0, mode="fill", fill_value=0).astype(jnp.float32)
    m = self.b1 * take(state.mu) + (1 - self.b1) * grad
    v = self.b2 * take(state.nu) + (1 - self.b2) * grad * grad
    m_hat = m / (1 - self.b1 ** t)
    v_hat = v / (1 - self.b2 ** t)
    p = take(table)
    return p - lr * (m_hat / (jnp.sqrt(v_hat) + self.eps) + self.weight_decay * p), m, v

  @staticmethod
  def write(table: jax.Array, state: LazyAdamState, rows: jax.Array, p: jax.Array,
            m: jax.Array, v: jax.Array, commit=True) -> tuple[jax.Array, LazyAdamState]:
    """Writes `new_rows`' rows into (table, state) and counts the update; with commit False
    (a traced bool) nothing changes (every row id becomes N, which the scatters drop)."""
    rows = jnp.where(commit, rows, table.shape[0])
    put = lambda a, x: a.at[rows].set(x.astype(a.dtype), mode="drop")
    count = state.count + jnp.asarray(commit, jnp.int32)
    return put(table, p), LazyAdamState(count, put(state.mu, m), put(state.nu, v))


def nested(leaves: dict) -> dict:
  """{path: leaf} as nested dicts."""
  tree = {}
  for path, leaf in leaves.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree


@dataclasses.dataclass(frozen=True)
class RowSparseValueOptimizer:
  """A train-step optimizer whose value tables get row-sparse gradients and a lazy AdamW.

  `dense` (any optax transformation) updates every parameter but the value tables at
  `table_paths`, which it never sees: its state and updates have None there. Each table V
  gets `values` (`LazyAdamW`) on the rows read this step, from the row-sparse gradient (*) of
  `value_and_grad`. Global-norm clipping (`grad_clip` > 0) is over all gradients together,
  the tables' (*) included, as optax.clip_by_global_norm does with dense gradients.

  State: {"dense": dense's state, "values": {"count", "mu", "nu"}}, mu and nu holding one
  [N, D] moment per table at the table's own parameter path (so they take its sharding).

  The interface is that of `runtime.optimizers.StepOptimizer`: `value_and_grad` returns
  (loss, (grads, reads)) and `update` (checked, grad_norm, commit); commit(False) writes no
  row, so even a rejected step never runs an [N, D] select.
  """
  dense: Any  # optax.GradientTransformation
  values: LazyAdamW
  table_paths: tuple
  grad_clip: float

  def init(self, params) -> dict:
    rest, tables = split_tables(params, list(self.table_paths))
    moments = nested({p: jnp.zeros(t.shape, t.dtype) for p, t in tables.items()})
    return dict(dense=self.dense.init(rest),
                values=dict(count=jnp.zeros((), jnp.int32), mu=moments, nu=moments))

  def value_and_grad(self, loss_of_model: Callable, graphdef: nnx.GraphDef, params: dict):
    loss, grads, reads = value_and_grad(loss_of_model, graphdef, params)
    return loss, (grads, reads)

  def update(self, gradients, state: dict, params: dict):
    """(checked, grad_norm, commit) for gradients = (grads of all but the tables, None there;
    {table path: TableReads}). checked: every gradient (a table's: its distinct-row gradient)
    and every updated parameter (a table's: its updated rows), in `jax.tree.leaves(params)`
    order; grad_norm: the global norm before clipping."""
    grads, reads = gradients
    paths = list(self.table_paths)
    if set(reads) != set(paths):
      raise ValueError(f"row-sparse gradients for tables {sorted(reads)}, expected {paths}")
    rest, tables = split_tables(params, paths)
    rows = {p: unique_rows(reads[p], tables[p].shape[0]) for p in paths}
    table_grads = {p: g for p, (_, g) in rows.items()}
    norm = jnp.sqrt(optax.tree.norm(grads, squared=True) +
                    sum(jnp.sum(g * g) for g in table_grads.values()))
    all_grads = merge_tables(grads, table_grads)
    if self.grad_clip:  # as optax.clip_by_global_norm
      clip = lambda t: jnp.where(norm < self.grad_clip, t,
                                 (t / norm.astype(t.dtype)) * self.grad_clip)
      grads, table_grads = jax.tree.map(clip, (grads, table_grads))
    updates, dense_state = self.dense.update(grads, state["dense"], rest)
    new_rest = optax.apply_updates(rest, updates)
    v = state["values"]
    table_states = {p: LazyAdamState(v["count"], get_path(v["mu"], p), get_path(v["nu"], p))
                    for p in paths}
    new_rows = {p: self.values.new_rows(tables[p], table_states[p], rows[p][0], table_grads[p])
                for p in paths}
    updated = merge_tables(new_rest, {p: r[0] for p, r in new_rows.items()})

    def commit(ok):
      new_tables, mu, nu = {}, v["mu"], v["nu"]
      for p in paths:
        new_tables[p], s = self.values.write(tables[p], table_states[p], rows[p][0],
                                             *new_rows[p], commit=ok)
        mu, nu = set_path(mu, p, s.mu), set_path(nu, p, s.nu)
      new_state = dict(dense=optax.tree_utils.tree_where(ok, dense_state, state["dense"]),
                       values=dict(count=v["count"] + ok.astype(jnp.int32), mu=mu, nu=nu))
      return merge_tables(optax.tree_utils.tree_where(ok, new_rest, rest), new_tables), new_state

    return jax.tree.leaves(all_grads) + jax.tree.leaves(updated), norm, commit
