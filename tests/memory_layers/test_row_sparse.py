"""Row-sparse value-table gradients and updates equal the dense ones (memory_layers.row_sparse)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from memory_layers import ProductKeyMemory, ValuePool, read_values
from memory_layers import row_sparse

N, EMBED, VALUE = 16, 8, 8


class ThreeLayers(nnx.Module):
  """Layers a and b share one pool (Memory+), c has its own."""

  def __init__(self, rngs):
    shared, own = ValuePool(N, VALUE, rngs=rngs), ValuePool(N, VALUE, rngs=rngs)
    kw = dict(num_heads=2, key_dim=4, top_k=2, gated_output=True, query_norm=True, rngs=rngs)
    self.a = ProductKeyMemory(EMBED, shared, **kw)
    self.b = ProductKeyMemory(EMBED, shared, **kw)
    self.c = ProductKeyMemory(EMBED, own, **kw)

  def __call__(self, x):
    h = x + self.a(x)
    h = h + jnp.tanh(self.b(h))
    return h + self.c(h)


def _setup():
  graphdef, state = nnx.split(ThreeLayers(nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  keys = jax.random.split(jax.random.key(1))
  x = jax.random.normal(keys[0], (2, 3, EMBED))
  target = jax.random.normal(keys[1], x.shape)
  return graphdef, params, x, target


def _loss(model, x, target):
  return jnp.sum(jnp.sin(model(x)) * target)


def test_gradients_equal_dense_for_shared_and_own_tables():
  graphdef, params, x, target = _setup()
  paths = row_sparse.table_paths(nnx.merge(graphdef, params))
  assert paths == [("a", "values", "table"), ("c", "values", "table")]

  dense_loss, dense = jax.value_and_grad(
      lambda p: _loss(nnx.merge(graphdef, p), x, target))(params)
  loss, grads, reads = jax.jit(lambda p: row_sparse.value_and_grad(
      _loss, graphdef, p, x, target))(params)

  np.testing.assert_allclose(loss, dense_loss, rtol=1e-6)
  assert [len(reads[p].indices) for p in paths] == [2, 1]  # the shared pool sums a and b
  flat = np.concatenate([np.ravel(i) for i in reads[paths[0]].indices])
  assert len(np.unique(flat)) < flat.size  # duplicate slots occur
  for path in paths:
    chex.assert_trees_all_close(row_sparse.densify(reads[path], N),
                                row_sparse.get_path(dense, path), rtol=1e-5, atol=1e-6)
    # unique_rows: distinct, ascending, padded with N, and the same sums.
    rows, g = row_sparse.unique_rows(reads[path], N)
    rows, g = np.asarray(rows), np.asarray(g)
    used = rows < N
    assert (np.diff(rows[used]) > 0).all() and (rows[~used] == N).all()
    assert (g[~used] == 0).all()
    np.testing.assert_allclose(g[used], np.asarray(row_sparse.get_path(dense, path))[rows[used]],
                               rtol=1e-5, atol=1e-6)
  # Every other parameter's gradient is unchanged by the mode; the tables get none.
  rest, _ = row_sparse.split_tables(dense, paths)
  chex.assert_trees_all_close(grads, rest, rtol=1e-5, atol=1e-6)
  assert all(row_sparse.get_path(grads, p) is None for p in paths)


def _dyadic_reads(seed):
  """Reads whose products and sums are exact in float32 (so any summation order agrees)."""
  rng = np.random.default_rng(seed)
  indices = rng.integers(0, N, (2, 3, 2, 4)).astype(np.int32)  # 48 reads of 16 rows
  weights = rng.integers(-4, 5, indices.shape).astype(np.float32) / 4
  g = rng.integers(-8, 9, (2, 3, VALUE)).astype(np.float32)
  return indices, weights, g


def test_sgd_equals_dense_sgd_exactly():
  layers = [_dyadic_reads(s) for s in (0, 1)]
  table = jnp.asarray(np.random.default_rng(2).integers(-16, 17, (N, VALUE)), jnp.float32)
  dense_grad = sum(jax.vjp(lambda t: read_values(t, i, w), table)[1](g)[0] for i, w, g in layers)
  reads = row_sparse.TableReads(*(tuple(jnp.asarray(l[k]) for l in layers) for k in range(3)))
  lr = 0.5
  sgd = optax.sgd(lr)
  dense_step = optax.apply_updates(table, sgd.update(dense_grad, sgd.init(table))[0])
  sparse_step = jax.jit(row_sparse.sgd, donate_argnums=0)(table + 0, reads, lr)
  np.testing.assert_array_equal(sparse_step, dense_step)
  np.testing.assert_array_equal(row_sparse.densify(reads, N), dense_grad)


def _numpy_lazy_adamw(table, mu, nu, t, rows, grad, lr, b1, b2, eps, wd):
  table, mu, nu = table.copy(), mu.copy(), nu.copy()
  for n, g in zip(rows, grad):
    mu[n] = b1 * mu[n] + (1 - b1) * g
    nu[n] = b2 * nu[n] + (1 - b2) * g * g
    step = mu[n] / (1 - b1 ** t) / (np.sqrt(nu[n] / (1 - b2 ** t)) + eps)
    table[n] = table[n] - lr * (step + wd * table[n])
  return table, mu, nu


def test_lazy_adamw_matches_numpy_and_leaves_untouched_rows():
  schedule = lambda count: 0.1 / (1.0 + count)
  opt = row_sparse.LazyAdamW(schedule, b1=0.8, b2=0.9, eps=1e-6, weight_decay=0.05)
  rng = np.random.default_rng(0)
  table = rng.normal(size=(N, VALUE)).astype(np.float32)
  state = opt.init(jnp.asarray(table))
  ref = (table, np.zeros_like(table), np.zeros_like(table))
  update = jax.jit(opt.update)
  # Each step touches some rows; reads of the same row are summed before the update.
  for t, touched in enumerate(([1, 3, 3, 7], [3, 5], [0, 1, 15, 15, 15]), start=1):
    reads = row_sparse.TableReads((jnp.asarray(touched, jnp.int32).reshape(1, 1, 1, -1),),
                                  (jnp.asarray(rng.normal(size=(1, 1, 1, len(touched))),
                                               jnp.float32),),
                                  (jnp.asarray(rng.normal(size=(1, 1, VALUE)), jnp.float32),))
    rows, grad = row_sparse.unique_rows(reads, N, size=6)  # padded: out-of-range rows dropped
    before = jax.tree.map(np.asarray, (state.mu, state.nu))
    new_table, state = update(jnp.asarray(ref[0]), state, rows, grad)
    used = np.asarray(rows) < N
    ref = _numpy_lazy_adamw(*ref, t, np.asarray(rows)[used], np.asarray(grad)[used],
                            schedule(t - 1), 0.8, 0.9, 1e-6, 0.05)
    np.testing.assert_allclose(new_table, ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.mu, ref[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.nu, ref[2], rtol=1e-5, atol=1e-7)
    untouched = np.setdiff1d(np.arange(N), touched)
    np.testing.assert_array_equal(np.asarray(new_table)[untouched], ref[0][untouched])
    for now, then in zip((state.mu, state.nu), before):
      np.testing.assert_array_equal(np.asarray(now)[untouched], then[untouched])
    assert int(state.count) == t


def test_lazy_adamw_touching_every_row_is_optax_adamw():
  rng = np.random.default_rng(3)
  table = jnp.asarray(rng.normal(size=(N, VALUE)), jnp.float32)
  opt = row_sparse.LazyAdamW(1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
  dense = optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
  sparse_t, sparse_s, dense_t, dense_s = table, opt.init(table), table, dense.init(table)
  for _ in range(3):
    grad = jnp.asarray(rng.normal(size=(N, VALUE)), jnp.float32)
    sparse_t, sparse_s = opt.update(sparse_t, sparse_s, jnp.arange(N, dtype=jnp.int32), grad)
    updates, dense_s = dense.update(grad, dense_s, dense_t)
    dense_t = optax.apply_updates(dense_t, updates)
  np.testing.assert_allclose(sparse_t, dense_t, rtol=1e-5, atol=1e-6)
