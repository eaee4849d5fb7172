"""Context-specific components: separate heads, XdG and PackNet.

All three use the context identity to choose which parts of the network act, so they serve
Task-IL only. They work on any network through its parameter pytree: a context's
sub-network is the network run with some parameters multiplied by a 0/1 mask.

* Separate heads (multi-head output; e.g. van de Ven et al. 2022, sec. 4): one output head
  per context, i.e. the Task-IL layout with T*K units where context c owns units
  [cK, (c+1)K) (`scenarios.output_layout(..., separate_heads=True)`); the body is shared and
  trained by plain fine-tuning.
* XdG, context-dependent gating (Masse, Grant & Freedman 2018, PNAS, "Alleviating
  catastrophic forgetting using context-dependent gating", Methods): for each context a
  fixed random subset of a proportion `gate_fraction` of the hidden units of every gated
  layer is silenced. A unit is silenced by zeroing its incoming weights and bias, so it
  outputs act(0), which is 0 for ReLU-family activations; gradients of gated weights are
  zero, so they are untouched by that context.
* PackNet (Mallya & Lazebnik 2018, "PackNet: adding multiple tasks to a single network by
  iterative pruning", sec. 3): each weight is free or owned by one context. During context
  c the free weights are trained; at `prune_step` the smallest-magnitude `prune_fraction` of
  the free weights of each weight array are set to zero and stay free, the rest become
  owned by c and are retrained alone for the remaining steps, then frozen. Context c
  predicts with the weights owned by contexts 0..c. As in the paper, 1-D parameters
  (biases) are trained with the first context only and then frozen. Frozen weights are
  restored after every optimizer step, so momentum and weight decay cannot move them.
"""
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cl_methods import losses
from cl_methods import method as method_lib
from cl_methods.scenarios import SCENARIO_NAMES

def task_il_only(what: str) -> dict:
  """The `unsupported` entry of a method that picks its `what` by context identity."""
  return {s: f"it needs the context identity at test time to choose its {what}, and "
             f"{SCENARIO_NAMES[s]} does not give it" for s in ("domain", "class")}


HEADS, GATES, WEIGHTS = "head", "gate", "weights"
PACKNET_BOUNDARY_REASON = "it prunes and freezes weights at the end of each context"


def per_context_outputs(apply_fn, params_for_context, x, context, n_contexts: int):
  """For each example, the network output with its own context's parameters.

  Runs the network once per context (vectorised over contexts) and picks, per example, the
  row of its context; a batch may mix contexts (task-free Task-IL streams).
  """
  outs = jax.vmap(lambda c: apply_fn(params_for_context(c), x))(jnp.arange(n_contexts))
  return jnp.take_along_axis(outs, context[None, :, None], axis=0)[0]


def separate_heads(apply_fn) -> method_lib.ContinualMethod:
  """Multi-head output over a shared body, trained by fine-tuning."""
  return method_lib.ContinualMethod(
      name="separate_heads", family="context-specific",
      loss=method_lib.cross_entropy_loss(apply_fn),
      predict=method_lib.classifier_predict(apply_fn),
      unsupported=task_il_only(HEADS), separate_heads=True)


def _path_key(entry):
  for attr in ("key", "idx", "name"):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return entry


def _under(path, prefix) -> bool:
  keys = tuple(_path_key(e) for e in path)
  return keys[: len(prefix)] == tuple(prefix)


class XdGState(NamedTuple):
  gates: tuple   # per gated layer: (T, units) float 0/1


def context_gating(apply_fn, *, gated_layers: Sequence[tuple], n_contexts: int,
                   gate_fraction: float, seed: int = 0) -> method_lib.ContinualMethod:
  """XdG over the layers at `gated_layers` (paths into the params pytree, e.g.
  ("hidden", 0)); every array under a gated layer has the layer's units on its last axis."""
  if not 0.0 <= gate_fraction < 1.0:
    raise ValueError(f"gate_fraction must be in [0, 1), got {gate_fraction}")
  gated_layers = tuple(tuple(p) for p in gated_layers)

  def init_state(params, example):
    del example
    rng = np.random.default_rng(seed)
    gates = []
    for prefix in gated_layers:
      widths = {leaf.shape[-1] for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                if _under(path, prefix)}
      if len(widths) != 1:
        raise ValueError(f"XdG: layer {prefix} must hold arrays with one common last-axis "
                         f"width (its units), found {sorted(widths)}")
      units = widths.pop()
      keep = units - int(round(gate_fraction * units))
      g = np.zeros((n_contexts, units), np.float32)
      for c in range(n_contexts):
        g[c, rng.choice(units, keep, replace=False)] = 1.0
      gates.append(jnp.asarray(g))
    return XdGState(gates=tuple(gates))

  def gated(params, state, context):
    def gate_leaf(path, leaf):
      for prefix, gate in zip(gated_layers, state.gates):
        if _under(path, prefix):
          return leaf * gate[context]
      return leaf
    return jax.tree_util.tree_map_with_path(gate_leaf, params)

  forward, loss = _per_context(apply_fn, gated, n_contexts)
  return method_lib.ContinualMethod(
      name="xdg", family="context-specific", loss=loss, predict=forward,
      init_state=init_state, unsupported=task_il_only(GATES))


def _per_context(apply_fn, params_for, n_contexts: int):
  """(forward, loss) of a method that runs each example with its context's parameters,
  `params_for(params, state, context)`; the loss is the cross-entropy of those logits."""

  def forward(params, state, batch):
    return per_context_outputs(apply_fn, lambda c: params_for(params, state, c), batch.x,
                               batch.context, n_contexts)

  def loss(params, state, batch, key):
    del key
    logits = forward(params, state, batch)
    return losses.cross_entropy(logits, batch.y, batch.mask, batch.valid), {"logits": logits}

  return forward, loss


class PackNetState(NamedTuple):
  owner: Any            # params-shaped int32: -1 free, else the owning context
  current: jax.Array    # int32: the context being trained
  pruned: jax.Array     # bool: the current context has been pruned


def _prunable(leaf) -> bool:
  return leaf.ndim >= 2


def packnet(apply_fn, *, n_contexts: int, prune_fraction: float,
            prune_step: int) -> method_lib.ContinualMethod:
  """PackNet; `prune_step` counts steps from the start of each context (>= 1)."""
  if not 0.0 < prune_fraction < 1.0:
    raise ValueError(f"prune_fraction must be in (0, 1), got {prune_fraction}")
  if prune_step < 1:
    raise ValueError(f"prune_step must be >= 1, got {prune_step}")

  def init_state(params, example):
    del example
    owner = jax.tree.map(lambda a: jnp.full(a.shape, -1 if _prunable(a) else 0, jnp.int32),
                         params)
    return PackNetState(owner=owner, current=jnp.zeros((), jnp.int32),
                        pruned=jnp.zeros((), bool))

  def params_for(params, state, context):
    def select(p, owner):
      usable = ((owner >= 0) & (owner <= context)) | (
          (owner < 0) & (context == state.current) & ~state.pruned)
      return jnp.where(usable, p, 0.0)
    return jax.tree.map(select, params, state.owner)

  forward, loss = _per_context(apply_fn, params_for, n_contexts)

  def begin_context(params, state, context):
    del params
    return state._replace(current=jnp.asarray(context, jnp.int32), pruned=jnp.zeros((), bool))

  def prune(params, state):
    def prune_leaf(p, owner):
      if not _prunable(p):
        return p, owner
      free = owner < 0
      magnitude = jnp.where(free, jnp.abs(p), jnp.inf).ravel()
      rank = jnp.zeros(magnitude.shape, jnp.int32).at[jnp.argsort(magnitude)].set(
          jnp.arange(magnitude.size, dtype=jnp.int32)).reshape(p.shape)
      n_prune = jnp.floor(prune_fraction * free.sum()).astype(jnp.int32)
      dropped = free & (rank < n_prune)
      kept = free & ~dropped
      return jnp.where(dropped, 0.0, p), jnp.where(kept, state.current, owner)

    leaves, treedef = jax.tree.flatten(params)
    pruned = [prune_leaf(p, o) for p, o in zip(leaves, treedef.flatten_up_to(state.owner))]
    new_params = treedef.unflatten([p for p, _ in pruned])
    owner = treedef.unflatten([o for _, o in pruned])
    return new_params, state._replace(owner=owner, pruned=jnp.ones((), bool))

  def after_update(old_params, new_params, grads, state, batch, aux, info, key):
    del grads, batch, aux, key
    def keep_frozen(old, new, owner):
      trainable = (owner == state.current) | ((owner < 0) & ~state.pruned)
      return jnp.where(trainable, new, old)
    new_params = jax.tree.map(keep_frozen, old_params, new_params, state.owner)
    return jax.lax.cond(info.step_in_context + 1 == prune_step, prune,
                        lambda p, s: (p, s), new_params, state)

  return method_lib.ContinualMethod(
      name="packnet", family="context-specific", loss=loss, predict=forward,
      init_state=init_state, begin_context=begin_context, after_update=after_update,
      unsupported=task_il_only(WEIGHTS), needs_boundaries=PACKNET_BOUNDARY_REASON)
