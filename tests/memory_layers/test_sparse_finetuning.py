"""TF-IDF selection by hand, the sparse update touching only the selected rows, the forward
pass unchanged, and LoRA's frozen base and zero-initialised B."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hope.transformer import transformer
from memory_layers import lora, sparse_finetuning, tfidf
from memory_layers.memory_lm import memory_lm

SLOTS = 64


def test_tfidf_matches_hand_computation():
  # 6 slots, |B| = 4 background batches.
  counts = jnp.array([3, 0, 1, 2, 0, 2])
  df = jnp.array([4, 0, 0, 1, 3, 4])
  idf = np.log(5.0 / (np.array([4, 0, 0, 1, 3, 4]) + 1.0))
  want = np.array([3, 0, 1, 2, 0, 2]) / 8.0 * idf
  np.testing.assert_allclose(tfidf.tfidf_scores(counts, df, 4), want, rtol=1e-6)
  # Scores: slot 0: 3/8*log(1)=0, slot 2: 1/8*log 5, slot 3: 2/8*log 2.5, slot 5: 0.
  # Top-2 among read slots: 3 (0.229) and 2 (0.201).
  np.testing.assert_array_equal(np.flatnonzero(tfidf.select_slots(counts, df, 4, 2)), [2, 3])
  # Counts only (no IDF): slots 0 and 3 (ties 3 vs 5 break to the lower id).
  np.testing.assert_array_equal(np.flatnonzero(tfidf.select_slots(counts, df, 4, 2, "tf")),
                                [0, 3])
  np.testing.assert_array_equal(np.flatnonzero(tfidf.select_slots(counts, None, 4, 9, "all")),
                                [0, 2, 3, 5])
  # t above the slots read selects only the slots read; never an unread slot.
  np.testing.assert_array_equal(np.flatnonzero(tfidf.select_slots(counts, df, 4, 6)),
                                [0, 2, 3, 5])
  np.testing.assert_array_equal(tfidf.batch_presence(counts), [1, 0, 1, 1, 0, 1])


@pytest.mark.parametrize("t", [0, 7, 2.0])
def test_t_outside_the_table_is_an_error(t):
  with pytest.raises(ValueError, match=r"t must be an integer in 1\.\.6"):
    tfidf.select_slots(jnp.ones(6), jnp.zeros(6), 4, t)


def test_a_model_without_memory_layer_is_an_error():
  model = nnx.eval_shape(lambda: transformer(vocab_size=256, dim=16, num_layers=1, num_heads=2,
                                             mlp_dim=32, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="has no memory layer"):
    sparse_finetuning.memory_layers_of(model)


@pytest.fixture(scope="module")
def lm():
  build = lambda: memory_lm(vocab_size=256, dim=16, num_layers=2, num_heads=2, mlp_dim=32,
                            memory_layers=(1,), num_slots=SLOTS, memory_heads=2, key_dim=8,
                            top_k=4, rngs=nnx.Rngs(0))
  model = nnx.eval_shape(build)
  graphdef, _ = nnx.split(model)
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build())))()
  tokens = jax.random.randint(jax.random.key(1), (3, 9), 1, 256)
  mask = jnp.ones((3, 9), jnp.int32).at[2, 5:].set(0)
  return model, graphdef, params, (tokens, mask)


def _loss(reads, params, batch):
  tokens, mask = batch
  logits, counts = reads(params, tokens[:, :-1], mask[:, :-1])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  return (ce * mask[:, 1:]).sum() / mask[:, 1:].sum(), counts


def test_sparse_step_changes_only_the_selected_rows_and_keeps_the_forward(lm):
  model, graphdef, params, batch = lm
  reads = sparse_finetuning.reading_apply(graphdef, SLOTS)
  labels = sparse_finetuning.value_labels(model)
  df = jnp.arange(SLOTS) % 5
  select = lambda c: tfidf.select_slots(c, df, 4, 5)
  tx = optax.sgd(10.0)
  step = jax.jit(sparse_finetuning.sparse_step(lambda p, b: _loss(reads, p, b), labels, select,
                                               tx))
  opt_state = tx.init(sparse_finetuning.value_tables(params, labels))
  new, _, loss, slots = step(params, opt_state, batch)

  # The forward pass is the model's own: the loss equals the plain model's, the logits too.
  @jax.jit
  def forward(params, batch):
    logits, counts = reads(params, batch[0][:, :-1], batch[1][:, :-1])
    plain = nnx.merge(graphdef, params)(batch[0][:, :-1])
    return logits, counts, plain, _loss(reads, params, batch)[0]

  logits, counts, plain, plain_loss = forward(params, batch)
  np.testing.assert_allclose(logits, plain, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)

  np.testing.assert_array_equal(slots, select(counts))
  assert int(slots.sum()) == 5
  table = lambda p: np.asarray(p["blocks"][1]["mlp"]["values"]["table"])
  changed = np.any(table(new) != table(params), axis=1)
  np.testing.assert_array_equal(changed, np.asarray(slots))
  others = lambda p: [x for path, x in jax.tree_util.tree_flatten_with_path(p)[0]
                      if "values" not in str(path)]
  for a, b in zip(others(new), others(params)):
    np.testing.assert_array_equal(a, b)


def test_lora_zero_b_keeps_the_forward_and_trains_only_adapters(lm):
  model, graphdef, params, (tokens, _) = lm
  targets = lora.lora_targets(model, lora.ATTENTION + lora.MLP)
  assert ("blocks", 0, "mlp", "up", "kernel") in targets
  assert targets[("blocks", 0, "mixer", "out", "kernel")] == 2  # [heads, head_dim] -> embed
  adapters = lora.init_lora(params, targets, 2, jax.random.key(0))
  tx = optax.adamw(1e-2)

  @jax.jit
  def check(params, adapters):
    apply = lambda p: nnx.merge(graphdef, p)(tokens)
    loss = lambda a: apply(lora.merge_lora(params, a, 4.0)).std()
    grads = jax.grad(loss)(adapters)
    updates, _ = tx.update(grads, tx.init(adapters), adapters)
    trained = lora.merge_lora(params, optax.apply_updates(adapters, updates), 4.0)
    return apply(lora.merge_lora(params, adapters, 4.0)), apply(params), trained

  at_init, plain, trained = check(params, adapters)
  np.testing.assert_array_equal(at_init, plain)
  # After a step on the adapters, targeted kernels moved; the base weights did not.
  for path, kernel in jax.tree_util.tree_flatten_with_path(trained)[0]:
    keys = tuple(k.key for k in path)
    before = _get(params, keys)
    assert np.array_equal(kernel, before) != (keys in targets), keys


def _get(tree, keys):
  for k in keys:
    tree = tree[k]
  return tree


@pytest.mark.parametrize("selection", ["tfidf", "tf", "all"])
def test_row_sparse_step_equals_the_dense_sparse_step(lm, selection):
  """The row-sparse SGD step selects the same slots and makes the same update as
  `sparse_step` with a dense gradient and optax.sgd, padding's reads not counted."""
  model, graphdef, params, batch = lm
  reads = sparse_finetuning.reading_apply(graphdef, SLOTS)
  labels = sparse_finetuning.value_labels(model)
  df = jnp.arange(SLOTS) % 5
  dense = jax.jit(sparse_finetuning.sparse_step(
      lambda p, b: _loss(reads, p, b), labels,
      lambda c: tfidf.select_slots(c, df, 4, 5, selection), optax.sgd(10.0)))
  want, _, want_loss, want_slots = dense(
      params, optax.sgd(10.0).init(sparse_finetuning.value_tables(params, labels)), batch)

  def loss_of_model(model, batch):
    tokens, mask = batch
    ce = optax.softmax_cross_entropy_with_integer_labels(model(tokens[:, :-1]), tokens[:, 1:])
    return (ce * mask[:, 1:]).sum() / mask[:, 1:].sum(), mask[:, :-1]

  sparse = jax.jit(sparse_finetuning.row_sparse_step(
      loss_of_model, graphdef, lambda rows, c: tfidf.select_rows(rows, c, df, 4, 5, selection)))
  got, loss, updated = sparse(params, batch, 10.0)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  assert int(updated) == int(want_slots.sum()) and (selection == "all" or int(updated) == 5)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
