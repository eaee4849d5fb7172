"""Functional regularization: Learning without Forgetting (Li & Hoiem 2017, eq. 2 / Alg. 1).

At the start of each context after the first, a frozen copy of the network is kept; on the
*current* inputs the new network is trained to reproduce the old network's softened
outputs (temperature T) on the output units of every earlier context:
    L = CE(current) + mean_{k < c} KD_T(f(x), f_old(x); units of context k).
In Task-IL every earlier context's head is distilled on its own units; in Domain-IL and
Class-IL all units are active in every context, so the term is one distillation over all
units (the zero-padding of new classes in van de Ven et al.'s code is unnecessary here
because the old network already has an output for every unit). Following that code the
two terms are added without weights and KD is not multiplied by T^2.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from cl_methods import losses
from cl_methods import method as method_lib


BOUNDARY_REASON = "it snapshots the network at each context boundary"


class LwFState(NamedTuple):
  old_params: Any
  past: jax.Array   # (T,) bool: contexts whose outputs are distilled


def learning_without_forgetting(apply_fn, *, temperature: float,
                                context_masks) -> method_lib.ContinualMethod:
  """LwF; `context_masks` (T, n_units) are the scenario's training masks per context."""
  context_masks = jnp.asarray(context_masks)
  n_contexts = context_masks.shape[0]

  def init_state(params, example):
    del example
    return LwFState(old_params=params, past=jnp.zeros((n_contexts,), bool))

  def begin_context(params, state, context):
    return LwFState(old_params=params, past=jnp.arange(n_contexts) < context)

  def loss(params, state, batch, key):
    del key
    logits = apply_fn(params, batch.x)
    current = losses.cross_entropy(logits, batch.y, batch.mask, batch.valid)
    teacher = jax.lax.stop_gradient(apply_fn(state.old_params, batch.x))

    def distil_on(mask):
      return losses.distillation(logits, teacher, jnp.broadcast_to(mask, logits.shape),
                                 batch.valid, temperature)

    per_context = jax.vmap(distil_on)(context_masks)
    weights = state.past.astype(jnp.float32)
    kd = (per_context * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    return current + kd, {"logits": logits}

  return method_lib.ContinualMethod(
      name="lwf", family="functional regularization", loss=loss,
      predict=method_lib.classifier_predict(apply_fn), init_state=init_state,
      begin_context=begin_context,
      needs_boundaries=BOUNDARY_REASON)
