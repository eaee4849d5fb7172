"""The two continual-learning methods that exist for language models only, as
`cl_methods.ContinualMethod`s: LoRA and Sparse Memory Finetuning.

Both train every parameter on the first context (it plays the pretraining corpus) and
restrict what learns from the second context on, which is how they are used on a
pretrained model:

* LoRA (Hu et al. 2021, eq. 3; `memory_layers.lora`): at the start of each later context
  the current parameters become the frozen base W and a fresh adapter (A, B = 0) is
  attached to the target matrices, W' = W + (alpha / r) A B. The step's full gradient
  G = dL/dW' gives the adapter's exactly by the chain rule (the vector-Jacobian product of
  the merge: dL/dA = (alpha / r) G B^T, dL/dB = (alpha / r) A^T G); AdamW on the adapter,
  and the parameters are the merge. So the model after a context is the base plus its
  low-rank update, which the next context's base keeps.
* Sparse Memory Finetuning (Lin et al. 2025, sec. 4; `memory_layers.tfidf`): during the
  first context, df(i) counts the training batches that read slot i (the background
  documents). In later contexts each step reads the batch's slot counts c(i), selects the
  top-t slots by tf-idf and updates only their value rows, by SGD on the step's gradient:
  V[i] <- V[i] - lr * dL/dV[i] for i in the top t; every other parameter is frozen.

The outer optimizer still runs on the full gradient (its update is replaced); both
methods need signalled boundaries.
"""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cl_methods import method as method_lib
from memory_layers import lora, sparse_finetuning, tfidf
from runtime.errors import UsageError

BOUNDARY_REASON = "it restricts learning from the second context on, at a boundary"
LORA_TARGETS = lora.ATTENTION + lora.MLP


class LoRAState(NamedTuple):
  base: Any         # params-shaped: the frozen parameters of the current context
  adapters: Any     # {target: {"a", "b"}}
  opt_state: Any    # AdamW's state of the adapters
  active: jax.Array  # bool: a context after the first


def lora_method(run, *, rank: int, alpha: float, learning_rate: float, weight_decay: float,
                seed: int) -> method_lib.ContinualMethod:
  """LoRA on the Dense matrices named in LORA_TARGETS (alpha 0: the rank)."""
  try:
    targets = lora.lora_targets(nnx.merge(run.graphdef, run.abstract_params), LORA_TARGETS)
  except ValueError as e:
    raise UsageError(f"method lora on {run.config.model.name}: {e}") from e
  alpha = alpha or rank
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)
  key = jax.random.key(seed)

  def fresh(params, active):
    adapters = lora.init_lora(params, targets, rank, key)
    return LoRAState(base=params, adapters=adapters, opt_state=tx.init(adapters),
                     active=jnp.asarray(active))

  def after_update(old_params, new_params, grads, state, batch, aux, info, key):
    del old_params, batch, aux, info, key
    merged, pullback = jax.vjp(lambda a: lora.merge_lora(state.base, a, alpha), state.adapters)
    del merged
    adapter_grads, = pullback(grads)
    updates, opt_state = tx.update(adapter_grads, state.opt_state, state.adapters)
    adapters = optax.apply_updates(state.adapters, updates)
    lora_params = lora.merge_lora(state.base, adapters, alpha)
    pick = functools.partial(optax.tree_utils.tree_where, state.active)
    return (pick(lora_params, new_params),
            pick(state._replace(adapters=adapters, opt_state=opt_state), state))

  def begin_context(params, state, context):
    return fresh(params, context >= 1)

  return method_lib.ContinualMethod(
      name="lora", family="parameter-efficient finetuning",
      loss=method_lib.cross_entropy_loss(run.apply), predict=method_lib.classifier_predict(run.apply),
      init_state=lambda params, example: fresh(params, False), after_update=after_update,
      begin_context=begin_context, needs_boundaries=BOUNDARY_REASON)


class SMFState(NamedTuple):
  df: jax.Array          # [N] int32: background batches that read each slot
  documents: jax.Array   # int32: how many background batches
  active: jax.Array      # bool: a context after the first


def sparse_memory_finetuning(run, *, top_t: int, learning_rate: float
                             ) -> method_lib.ContinualMethod:
  """SMF with TF-IDF top-`top_t` slots per step and SGD at `learning_rate` on their rows."""
  model = nnx.merge(run.graphdef, run.abstract_params)
  try:
    layers = sparse_finetuning.memory_layers_of(model)
  except ValueError as e:
    raise UsageError(f"method smf on {run.config.model.name}: {e}") from e
  num_slots = layers[0].values.num_slots
  try:
    tfidf.check_top_t(top_t, num_slots, "smf top_t")
  except ValueError as e:
    raise UsageError(str(e)) from e
  labels = sparse_finetuning.value_labels(model)
  reads = sparse_finetuning.reading_apply(run.graphdef, num_slots)

  def counts_of(params, x):
    return reads(params, x, jnp.ones(x.shape, jnp.int32))[1]

  def after_update(old_params, new_params, grads, state, batch, aux, info, key):
    del aux, info, key
    counts = counts_of(old_params, batch.x)
    chosen = tfidf.select_slots(counts, state.df, state.documents, top_t, "tfidf")
    sgd = lambda p, g: p - learning_rate * g * chosen[:, None].astype(p.dtype)
    values = jax.tree.map(sgd, sparse_finetuning.value_tables(old_params, labels),
                          sparse_finetuning.value_tables(grads, labels))
    sparse = sparse_finetuning.with_value_tables(old_params, values, labels)
    background = state._replace(df=state.df + tfidf.batch_presence(counts),
                                documents=state.documents + 1)
    pick = functools.partial(optax.tree_utils.tree_where, state.active)
    return pick(sparse, new_params), pick(state, background)

  def begin_context(params, state, context):
    del params
    return state._replace(active=context >= 1)

  return method_lib.ContinualMethod(
      name="smf", family="parameter-efficient finetuning",
      loss=method_lib.cross_entropy_loss(run.apply), predict=method_lib.classifier_predict(run.apply),
      init_state=lambda params, example: SMFState(
          df=jnp.zeros((num_slots,), jnp.int32), documents=jnp.zeros((), jnp.int32),
          active=jnp.asarray(False)),
      after_update=after_update, begin_context=begin_context,
      needs_boundaries=BOUNDARY_REASON)
