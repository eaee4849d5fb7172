"""The interface every continual-learning method implements: pure functions over pytrees.

A `ContinualMethod` bundles the functions the training loop calls (all jit-compatible; the
context index arrives as an int32 array so one compile serves every context):

  init_state(params, example) -> state
      method state (buffers, importances, anchors, masks, old parameters); `example` is a
      Batch with leading dimension 1 that fixes shapes.
  loss(params, state, batch, key) -> (scalar, aux)
      the training objective on one batch; `aux` is a dict passed on to `after_update`.
  transform_grads(grads, params, state, batch, key) -> grads            [optional]
      e.g. A-GEM's projection.
  after_update(old_params, new_params, grads, state, batch, aux, info, key)
      -> (new_params, state)                                            [optional]
      e.g. SI's path integral, reservoir insertion, PackNet's frozen weights.
  begin_context(params, state, context) -> state                        [optional]
  end_context(params, state, data, context, key) -> (params, state)     [optional]
      consolidation at a context boundary on up to N examples of the finished context;
      after the last context too unless `end_context_at_last` is False (a method whose
      consolidation only serves later contexts: importances and anchors).
  predict(params, state, batch) -> scores (B, n_units)
      the runner takes the argmax over `batch.mask`.
  init_params(model_params, example, key) -> trainable params                    [optional]
      for methods that train something other than the given network (generative
      classifier).

Methods are built by factories that close over the model's `apply_fn(params, x) -> logits`
(and `features_fn` where a method needs an embedding); any optax transformation trains
them (see `train_step.py`).
"""
import dataclasses
from typing import Callable, NamedTuple, Optional

import jax

from cl_methods import losses
from cl_methods.scenarios import SCENARIO_NAMES


class StepInfo(NamedTuple):
  step: jax.Array             # global training step
  step_in_context: jax.Array  # steps since the current context began (task-based streams)
  context: jax.Array          # current context; -1 in a task-free stream


def no_state(params, example):
  del params, example
  return ()


@dataclasses.dataclass(frozen=True)
class ContinualMethod:
  """A continual-learning method as a bundle of pure functions (see module docstring)."""
  name: str
  family: str
  loss: Callable
  predict: Callable
  init_state: Callable = no_state
  transform_grads: Optional[Callable] = None
  after_update: Optional[Callable] = None
  begin_context: Optional[Callable] = None
  end_context: Optional[Callable] = None
  init_params: Optional[Callable] = None
  # Scenario -> why this method cannot serve it.
  unsupported: dict = dataclasses.field(default_factory=dict)
  # Why the method needs signalled context boundaries ("" when it does not).
  needs_boundaries: str = ""
  # Whether end_context runs after the last context as well (see the module docstring).
  end_context_at_last: bool = True
  # Trains on all contexts interleaved (the joint upper bound).
  interleaved: bool = False
  # Uses one output head per context (a Task-IL layout with T*K units).
  separate_heads: bool = False

  def serves(self, scenario: str) -> bool:
    return scenario not in self.unsupported

  def why_not(self, scenario: str) -> str:
    return (f"{self.name} cannot serve {SCENARIO_NAMES[scenario]}: "
            f"{self.unsupported[scenario]}")


def classifier_predict(apply_fn) -> Callable:
  """predict(): the network's logits."""

  def predict(params, state, batch):
    del state
    return apply_fn(params, batch.x)

  return predict


def cross_entropy_loss(apply_fn) -> Callable:
  """loss(): masked cross-entropy on the current batch; aux carries the logits."""

  def loss(params, state, batch, key):
    del state, key
    logits = apply_fn(params, batch.x)
    return losses.cross_entropy(logits, batch.y, batch.mask, batch.valid), {"logits": logits}

  return loss

