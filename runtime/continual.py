"""Continual-learning methods (`cl_methods`) on the language models of the training runtime.

A method sees a language model as a classifier of sequences: `apply_fn(params, x)` gives
next-byte logits (B, T, 256) for inputs x = tokens[:, :-1], the labels are y = tokens[:, 1:],
every byte is an active output unit, and a loss is the mean over positions (`cl_methods.losses`).
A domain stream is Domain-IL: one label space, a new input distribution per context, no
context given at test time; so the methods that serve Domain-IL serve language models, and
so do LoRA and Sparse Memory Finetuning (`runtime.lm_methods`).

`MethodTraining` holds what the loop needs: the train step (the method's loss, gradient
transform and after-update around the run's step optimizer, with the runtime's non-finite
guard), the method state's shardings (params-shaped parts sharded like the parameters, the
rest replicated) and the boundary hooks, jitted, with the context as an array argument so
one compile serves every context.

A method batch is {"tokens": [B, T + 1], "context": [B], "phase_start": [B]} (the context
id, -1 in a task-free stream; the step at which the current phase began).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from cl_methods import batch as batch_lib
from cl_methods import registry
from cl_methods import scenarios
from cl_methods.benchmark_models import FunctionalModel
from cl_methods.method import ContinualMethod, StepInfo
from runtime import lm_methods, optimizers, text_data, training
from runtime.errors import UsageError

LM_SCENARIO = "domain"
# The methods for language models only (`runtime.lm_methods`), with their hyperparameters.
LM_ONLY = {"lora": ("rank", "alpha", "learning_rate", "weight_decay"),
           "smf": ("top_t", "learning_rate")}
LM_METHODS = tuple(n for n, e in registry.ENTRIES.items() if e.serves(LM_SCENARIO)) + tuple(LM_ONLY)


def lm_layout(n_contexts: int) -> scenarios.OutputLayout:
  """The output layout of a byte-level LM stream: 256 units shared by every context."""
  units = jnp.broadcast_to(jnp.arange(text_data.VOCAB_SIZE, dtype=jnp.int32),
                           (n_contexts, text_data.VOCAB_SIZE))
  mask = jnp.ones((n_contexts, text_data.VOCAB_SIZE), bool)
  return scenarios.OutputLayout(
      scenario=LM_SCENARIO, n_units=text_data.VOCAB_SIZE, unit_of_label=units,
      context_units=units, train_mask=mask, test_mask=mask, separate_heads=False,
      description="next-byte prediction: 256 units shared by every context")


def check_method(name: str) -> None:
  """UsageError unless method `name` can train a language model."""
  if name in LM_ONLY:
    return
  if name not in registry.ENTRIES:
    raise UsageError(f"unknown method {name!r}; for language models choose from "
                     f"{', '.join(LM_METHODS)}")
  entry = registry.ENTRIES[name]
  if not entry.serves(LM_SCENARIO):
    raise UsageError(f"method {name} cannot train a language model: a domain stream is "
                     f"Domain-IL and {name} {entry.unsupported[LM_SCENARIO]}; choose from "
                     f"{', '.join(LM_METHODS)}")


def build_method(name: str, run: training.Run, hparams: dict, *, n_contexts: int,
                 steps_per_context: int, seed: int) -> ContinualMethod:
  """Method `name` over `run`'s model (the EWC family with the sampled Fisher); a method
  that cannot serve the model (LoRA without target matrices, SMF without a memory layer)
  is a UsageError. No compile."""
  check_method(name)
  if name == "lora":
    return lm_methods.lora_method(run, seed=seed, **hparams)
  if name == "smf":
    return lm_methods.sparse_memory_finetuning(run, **hparams)
  model = FunctionalModel(apply_fn=run.apply, features_fn=None,
                          params=run.abstract_params, gated_layers=[])
  if name in ("ewc", "online_ewc"):  # the exact Fisher would need T x 256 backward passes
    hparams = dict(hparams, fisher="sampled")
  return registry.build(name, model, lm_layout(n_contexts), hparams,
                        steps_per_context=steps_per_context, seed=seed)


def as_method_batch(tokens, context) -> batch_lib.Batch:
  """tokens [B, T + 1] and context ids [B] as a method's Batch (inputs, shifted labels)."""
  b = tokens.shape[0]
  return batch_lib.Batch(x=tokens[:, :-1], y=tokens[:, 1:],
                         mask=jnp.ones((b, text_data.VOCAB_SIZE), bool),
                         context=context.astype(jnp.int32), valid=jnp.ones((b,), bool))


def method_batch(tokens, context: int, phase_start: int) -> dict:
  """A host batch of the method step: tokens [b, T + 1] with its phase's context and start."""
  b = tokens.shape[0]
  return dict(tokens=tokens, context=np.full((b,), context, np.int32),
              phase_start=np.full((b,), phase_start, np.int32))


def _state_shardings(node, run: training.Run, replicated):
  """Params-shaped subtrees get the parameters' shardings, everything else is replicated."""
  if jax.tree.structure(node) == jax.tree.structure(run.abstract_params):
    return run.param_shardings
  if isinstance(node, tuple) and hasattr(node, "_fields"):
    return type(node)(*(_state_shardings(c, run, replicated) for c in node))
  if isinstance(node, (tuple, list)):
    return type(node)(_state_shardings(c, run, replicated) for c in node)
  if isinstance(node, dict):
    return {k: _state_shardings(v, run, replicated) for k, v in node.items()}
  return replicated


@dataclasses.dataclass
class MethodTraining:
  """A method's compiled pieces for one run and step optimizer (see the module docstring)."""
  method: ContinualMethod
  run: training.Run
  tx: object
  schedule: optax.Schedule

  def __post_init__(self):
    if not isinstance(self.tx, optax.GradientTransformation):
      raise UsageError(f"method {self.method.name} needs a dense optimizer; "
                       "config.optimizer.sparse_value_updates must be False")
    run = self.run
    self.step_optimizer = optimizers.as_step_optimizer(self.tx)
    replicated = NamedSharding(run.mesh, P())
    abstract = jax.eval_shape(self.init_state, run.abstract_params)
    self.method_shardings = _state_shardings(abstract, run, replicated)
    self.batch_shardings = dict(tokens=run.batch_sharding, context=run.batch_sharding,
                                phase_start=run.batch_sharding)

  def init_state(self, params):
    """The method's initial state (its shapes fixed by a batch of one sequence)."""
    example = as_method_batch(jnp.zeros((1, self.run.config.seq_len + 1), jnp.int32),
                              jnp.zeros((1,), jnp.int32))
    return self.method.init_state(params, example)

  def make_step(self, shardings: dict):
    """The jitted train step over method batches (`runtime.training.make_train_step`'s
    contract: state buffers donated, a non-finite loss, gradient or parameter keeps the
    previous parameters, optimizer state and method state)."""
    method, tx, schedule = self.method, self.step_optimizer, self.schedule

    def train_step(state, batch):
      rng = jax.random.fold_in(state["rng"], state["step"])
      k_loss, k_grad, k_after = jax.random.split(rng, 3)
      params, method_state = state["params"], state["method"]
      data = as_method_batch(batch["tokens"], batch["context"])
      (loss, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(
          params, method_state, data, k_loss)
      if method.transform_grads is not None:
        grads = method.transform_grads(grads, params, method_state, data, k_grad)
      checked, grad_norm, commit = tx.update(grads, state["opt_state"], params)
      finite = jnp.stack([jnp.isfinite(loss)] + [jnp.isfinite(x).all() for x in checked])
      ok = finite.all()
      new_params, opt_state = commit(ok)
      if method.after_update is not None:
        info = StepInfo(step=state["step"], step_in_context=state["step"] - batch["phase_start"][0],
                        context=batch["context"][0])
        after_params, after_state = method.after_update(params, new_params, grads, method_state,
                                                        data, aux, info, k_after)
        new_params = optax.tree_utils.tree_where(ok, after_params, params)
        method_state = optax.tree_utils.tree_where(ok, after_state, method_state)
      metrics = dict(loss=loss, grad_norm=grad_norm, learning_rate=schedule(state["step"]),
                     nonfinite=jnp.where(ok, -1, jnp.argmin(finite)))
      return dict(params=new_params, opt_state=opt_state, step=state["step"] + 1,
                  rng=state["rng"], method=method_state), metrics

    return jax.jit(train_step, in_shardings=(shardings, self.batch_shardings),
                   out_shardings=(shardings, NamedSharding(self.run.mesh, P())),
                   donate_argnums=0)

  def make_hooks(self, shardings: dict):
    """(end, begin), jitted: end(state, examples [N, T + 1], context) -> state runs the
    method's end_context on the finished context's examples; begin(state, context) -> state
    its begin_context. Either is None when the method has no such hook."""
    method = self.method
    examples_sharding = NamedSharding(self.run.mesh, P())
    end = begin = None
    if method.end_context is not None:
      def end_fn(state, examples, context):
        key = jax.random.fold_in(jax.random.fold_in(state["rng"], state["step"]), 1 << 20)
        data = as_method_batch(examples, jnp.full((examples.shape[0],), context))
        params, method_state = method.end_context(state["params"], state["method"], data,
                                                  context, key)
        return dict(state, params=params, method=method_state)
      end = jax.jit(end_fn, in_shardings=(shardings, examples_sharding, None),
                    out_shardings=shardings, donate_argnums=0)
    if method.begin_context is not None:
      def begin_fn(state, context):
        return dict(state, method=method.begin_context(state["params"], state["method"], context))
      begin = jax.jit(begin_fn, in_shardings=(shardings, None), out_shardings=shardings,
                      donate_argnums=0)
    return end, begin
