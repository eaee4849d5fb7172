"""Sparse Memory Finetuning (Lin et al. 2025, sec. 4): each step, only the value rows of the
slots selected in that batch (TF-IDF top-t, `memory_layers.tfidf`) learn; the rest is frozen.

The forward pass is the model's own (every accessed slot contributes); the mask acts on the
gradient. For the value table V and the batch's selected set S,

    g_V[i] <- 1[i in S] * dL/dV[i]

which is what the paper's straight-through table V*m + sg(V) - sg(V*m) computes, and the
update is plain SGD by default (V <- V - lr g_V, so exactly the rows in S change). Parameters
other than value tables are not differentiated at all.

`sparse_step` builds the table's gradient densely (any optax rule, e.g. AdamW on the masked
gradient); `row_sparse_step` is the SGD update from row-sparse gradients
(`memory_layers.row_sparse`): the distinct rows read, their gradient and read counts, the
selection among them, a scatter into the table, at a cost independent of the table's size.

One value table is supported: a single memory layer, or several layers sharing one pool
(their reads are pooled into one count, since the selection is per table).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from memory_layers import row_sparse

from memory_layers.access_stats import SlotAccess, slot_access_counts
from memory_layers.product_key_memory import ProductKeyMemory
from memory_layers.value_learning_rate import VALUE_TABLE, value_table_labels


def memory_layers_of(model: nnx.Module) -> list[ProductKeyMemory]:
  """The model's memory layers; ValueError when it has none or they read several tables."""
  layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, ProductKeyMemory)]
  if not layers:
    raise ValueError(f"the model ({type(model).__name__}) has no memory layer "
                     "(ProductKeyMemory); sparse memory finetuning needs one, e.g. "
                     "model.name=memory_lm")
  if len({id(m.values) for m in layers}) > 1:
    raise ValueError(f"the model's {len(layers)} memory layers read separate value tables; "
                     "sparse memory finetuning supports one table (shared_values=True)")
  return layers


def reading_apply(graphdef: nnx.GraphDef, num_slots: int) -> Callable:
  """fn(params, tokens, mask) -> (logits, c): the LM's logits and the reads c(i) [N] of its
  memory layers over the input tokens where mask != 0 (`slot_access_counts`)."""

  def apply(params, tokens, mask):
    model = nnx.merge(graphdef, params)
    for layer in memory_layers_of(model):
      layer.record_access = True
    logits, access = nnx.capture(model, SlotAccess)(tokens)
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(access))[0]
    reads = [slot_access_counts(x, num_slots, mask) for path, x in flat if "indices" in str(path)]
    return logits, sum(reads)

  return apply


def value_labels(model: nnx.Module) -> dict:
  """The pure parameter dict's structure with "value_table" at value tables, "other" elsewhere."""
  return value_table_labels(nnx.state(model))


def value_tables(params: dict, labels: dict) -> dict:
  """params with None everywhere but the value tables (the trainable part)."""
  return jax.tree.map(lambda label, p: p if label == VALUE_TABLE else None, labels, params)


def with_value_tables(params: dict, values: dict, labels: dict) -> dict:
  """params with its value tables replaced by those of `values`."""
  return jax.tree.map(lambda label, p, v: v if label == VALUE_TABLE else p, labels, params, values)


def sparse_step(loss_and_reads: Callable, labels: dict, select: Callable,
                tx: optax.GradientTransformation) -> Callable:
  """One SMF step: step(params, opt_state, batch) -> (params, opt_state, loss, slots).

  Args:
    loss_and_reads: (params, batch) -> (loss, c) with c the batch's slot reads [N].
    labels: `value_labels(model)`.
    select: c -> [N] bool mask of the slots that learn (e.g. `tfidf.select_slots`).
    tx: the update rule of the value tables (`optax.sgd` in the paper); its state comes from
      `tx.init(value_tables(params, labels))`.
  """

  def step(params, opt_state, batch):
    values = value_tables(params, labels)
    loss_of = lambda v: loss_and_reads(with_value_tables(params, v, labels), batch)
    (loss, counts), grads = jax.value_and_grad(loss_of, has_aux=True)(values)
    slots = select(counts)
    grads = jax.tree.map(lambda g: g * slots[:, None].astype(g.dtype), grads)
    updates, opt_state = tx.update(grads, opt_state, values)
    values = optax.apply_updates(values, updates)
    return with_value_tables(params, values, labels), opt_state, loss, slots

  return step


def row_sparse_step(loss_of_model: Callable, graphdef: nnx.GraphDef, select: Callable
                    ) -> Callable:
  """One SMF step with SGD on row-sparse gradients: step(params, batch, learning_rate) ->
  (params, loss, number of rows updated); `sparse_step` with optax.sgd computes the same.
  Donate params to update the table in place.

  Args:
    loss_of_model: (model, batch) -> (loss, token_mask [batch, seq]: the input tokens whose
      reads count).
    graphdef: the model's; params are its pure parameter dict.
    select: (rows [U], counts [U]) -> [U] bool mask of the rows that learn, among the
      distinct rows read (e.g. `tfidf.select_rows` with df bound).
  """

  def step(params, batch, learning_rate):
    (loss, token_mask), _, reads = row_sparse.value_and_grad(
        loss_of_model, graphdef, params, batch, has_aux=True)
    if len(reads) != 1:
      raise ValueError(f"sparse memory finetuning supports one value table, got {len(reads)}")
    (path, table_reads), = reads.items()
    table = row_sparse.get_path(params, path)
    rows, grad = row_sparse.unique_rows(table_reads, table.shape[0])
    chosen = select(rows, row_sparse.read_counts(table_reads, rows, token_mask))
    rows = jnp.where(chosen, rows, table.shape[0])
    table = table.at[rows].add((-learning_rate * grad).astype(table.dtype), mode="drop")
    return row_sparse.set_path(params, path, table), loss, chosen.sum()

  return step
