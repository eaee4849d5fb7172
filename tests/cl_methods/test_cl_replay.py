"""Reservoir buffer, ER and DER++."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from cl_methods import losses
from cl_methods import replay
from cl_methods import replay_buffer


def _offer_stream(capacity, n_items, batch, key):
  """Offers items 0..n_items-1 in batches (last one padded) and returns the buffer."""
  n_batches = -(-n_items // batch)
  items = jnp.arange(n_batches * batch).reshape(n_batches, batch)
  valid = items < n_items
  buf = replay_buffer.init(capacity, {"id": jnp.zeros((1,), jnp.int32)})

  def body(buf, xs):
    ids, ok, k = xs
    return replay_buffer.add(buf, {"id": ids}, ok, k), None

  buf, _ = jax.lax.scan(body, buf, (items, valid, jax.random.split(key, n_batches)))
  return buf


def test_reservoir_keeps_a_uniform_sample():
  capacity, n_items, trials = 10, 100, 4000
  keys = jax.random.split(jax.random.key(0), trials)
  bufs = jax.jit(jax.vmap(lambda k: _offer_stream(capacity, n_items, 7, k)))(keys)
  ids = np.asarray(bufs.items["id"])                                # (trials, capacity)
  assert (np.asarray(bufs.seen) == n_items).all()
  assert all(len(set(row)) == capacity for row in ids[:200])       # no duplicates
  freq = np.bincount(ids.ravel(), minlength=n_items) / trials
  # Every item is kept with probability capacity / n_items = 0.1 (std ~0.005 here).
  assert np.abs(freq - 0.1).max() < 0.03, freq
  # Early and late items alike: no recency bias.
  assert abs(freq[:50].mean() - freq[50:].mean()) < 0.01


def test_batch_offer_equals_one_by_one_offers():
  """Same random draws, applied sequentially by Algorithm R in Python."""
  cap, key = 4, jax.random.key(3)
  add = jax.jit(replay_buffer.add)
  buf = replay_buffer.init(cap, {"id": jnp.zeros((1,), jnp.int32)})
  buf = add(buf, {"id": jnp.arange(6)}, jnp.ones(6, bool), jax.random.key(1))
  new = jnp.arange(100, 112)
  out = add(buf, {"id": new}, jnp.ones(12, bool), key)
  offers = 6 + np.arange(12)
  j = np.asarray(jax.random.randint(key, (12,), 0, jnp.asarray(offers) + 1))
  expect = np.asarray(buf.items["id"]).copy()
  for item, n, jj in zip(np.asarray(new), offers, j):
    if n < cap:
      expect[n] = item
    elif jj < cap:
      expect[jj] = item
  np.testing.assert_array_equal(np.asarray(out.items["id"]), expect)
  assert int(out.seen) == 18


def test_sampling_an_empty_buffer_is_invalid():
  buf = replay_buffer.init(5, {"x": jnp.zeros((1, 3))})
  items, valid = replay_buffer.sample(buf, 4, jax.random.key(0))
  chex.assert_shape(items["x"], (4, 3))
  assert not valid.any()


def test_er_adds_the_replayed_batch_loss(tiny_mlp, make_batch):
  apply_fn, params = tiny_mlp.apply_fn, tiny_mlp.params
  method = replay.experience_replay(apply_fn, buffer_size=8)
  rng = np.random.default_rng(0)
  old = make_batch(rng.normal(size=(5, 6)), [0, 1, 0, 1, 0], 4, mask=[1, 1, 0, 0])
  new = make_batch(rng.normal(size=(5, 6)), [2, 3, 2, 3, 2], 4, mask=[0, 0, 1, 1])
  key = jax.random.key(0)

  @jax.jit
  def check(state):
    """(ER loss, CE on the current batch, CE on the replayed batch, replayed labels)."""
    items, valid = replay_buffer.sample(state, 5, key)
    ce_old = losses.cross_entropy(apply_fn(params, items["x"]), items["y"], items["mask"],
                                  valid)
    ce_new = losses.cross_entropy(apply_fn(params, new.x), new.y, new.mask, new.valid)
    return method.loss(params, state, new, key)[0], ce_new, ce_old, items["y"]

  state = method.init_state(params, new)
  loss, ce_new, ce_old, _ = check(state)                  # empty buffer: just the CE
  np.testing.assert_allclose(loss, ce_new, rtol=1e-6)
  assert ce_old == 0
  _, state = jax.jit(method.after_update)(params, params, None, state, old, {}, None, key)
  loss, ce_new, ce_old, replayed = check(state)
  assert set(np.asarray(replayed).tolist()) <= {0, 1}
  np.testing.assert_allclose(loss, ce_new + ce_old, rtol=1e-6)
  assert ce_old > 0


def test_derpp_matches_logits_stored_at_insertion(tiny_mlp, make_batch):
  apply_fn, params = tiny_mlp.apply_fn, tiny_mlp.params
  rng = np.random.default_rng(1)
  batch = make_batch(rng.normal(size=(6, 6)), [0, 1, 2, 3, 0, 1], 4)
  key = jax.random.key(0)
  with_logits = replay.dark_experience_replay(apply_fn, buffer_size=6, alpha=1.0, beta=0.0)
  no_logits = replay.dark_experience_replay(apply_fn, buffer_size=6, alpha=0.0, beta=0.0)
  state = with_logits.init_state(params, batch)
  _, aux = jax.jit(with_logits.loss)(params, state, batch, key)
  _, state = jax.jit(with_logits.after_update)(params, params, None, state, batch, aux, None,
                                                key)
  np.testing.assert_allclose(state.items["logits"], apply_fn(params, batch.x), rtol=1e-6)

  @jax.jit
  def logit_term(p):
    return with_logits.loss(p, state, batch, key)[0] - no_logits.loss(p, state, batch, key)[0]

  # At the parameters that produced the stored logits the logit term is zero ...
  np.testing.assert_allclose(logit_term(params), 0.0, atol=1e-6)
  # ... and after the network moved it is the mean squared logit change on replayed inputs.
  moved = jax.tree.map(lambda p: p + 0.3, params)
  term = logit_term(moved)
  items, _ = replay_buffer.sample(state, 6, jax.random.split(key)[0])
  expect = ((apply_fn(moved, items["x"]) - items["logits"]) ** 2).mean()
  np.testing.assert_allclose(term, expect, rtol=1e-5)
  assert term > 0
