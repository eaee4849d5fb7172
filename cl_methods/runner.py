"""Runs one method on one context sequence and records the accuracy matrix and curves.

Protocol (van de Ven et al. 2022; GEM's accuracy matrix; De Lange et al. 2023's continual
evaluation):
1. evaluate the initial network on every context's test set: b (random-init accuracy, FWT);
2. train `steps_per_context` batches per context; after every `eval_every` steps evaluate
   every context on `curve_examples` test examples (accuracy curves: the stability gap);
3. at the end of context i call the method's `end_context` on up to
   `consolidation_examples` training examples of context i (after the last context only
   where `method.end_context_at_last`), evaluate every context on its full test set (row i
   of R), then call `begin_context(i + 1)`.
Joint training (`method.interleaved`) draws all batches from all contexts and is evaluated
at the same steps; a task-free stream never calls the boundary hooks.

Compiles: one chunk of `eval_every` training steps (lax.scan over the jitted step), one
evaluation of min(eval_batch, curve_examples) test examples (both evaluation sets are cut
into such chunks), and each boundary hook once; the context index is an array argument,
so all contexts reuse them.
"""
import dataclasses
import functools
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cl_methods import batch as batch_lib
from cl_methods import losses
from cl_methods import metrics as metrics_lib
from cl_methods import streams as streams_lib
from cl_methods import train_step as train_step_lib
from cl_methods.method import StepInfo

STREAMS = ("task_based", "task_free")


@dataclasses.dataclass(frozen=True)
class RunSettings:
  steps_per_context: int = 200
  batch_size: int = 64
  eval_every: int = 20
  curve_examples: int = 128
  consolidation_examples: int = 512
  eval_batch: int = 256
  stream: str = "task_based"
  boundary_width: float = 0.2
  seed: int = 0
  # XLA options for the runner's compiled functions, e.g.
  # {"xla_backend_optimization_level": 0} for short runs whose time is mostly compilation.
  compiler_options: Optional[dict] = None

  def check(self):
    for name in ("steps_per_context", "batch_size", "eval_every", "curve_examples",
                 "consolidation_examples", "eval_batch"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.steps_per_context % self.eval_every:
      raise ValueError(f"steps_per_context ({self.steps_per_context}) must be a multiple of "
                       f"eval_every ({self.eval_every})")
    if self.stream not in STREAMS:
      raise ValueError(f"unknown stream {self.stream!r}; choose from {', '.join(STREAMS)}")
    if not 0.0 <= self.boundary_width <= 1.0:
      raise ValueError(f"boundary_width must be in [0, 1], got {self.boundary_width}")


@dataclasses.dataclass
class ContinualResult:
  accuracy_matrix: np.ndarray       # (T, T) R[i, j]
  random_init_accuracy: np.ndarray  # (T,)
  curve_steps: np.ndarray           # (E,)
  curve_accuracy: np.ndarray        # (E, T)
  boundary_steps: np.ndarray        # (T,) step at which each context's training ended
  seconds: float

  def metrics(self) -> dict:
    out = metrics_lib.summarize(self.accuracy_matrix, self.random_init_accuracy)
    out["min_acc"] = metrics_lib.min_accuracy(self.curve_steps, self.curve_accuracy,
                                              self.boundary_steps)
    return out


def check_compatible(method, stream: str):
  """Raises ValueError when the method cannot run on the stream."""
  if stream == "task_free" and method.needs_boundaries and not method.interleaved:
    raise ValueError(f"{method.name} needs context boundaries ({method.needs_boundaries}); "
                     "a task-free stream has none: use stream=task_based")


def _eval_chunks(members_per_context, size_per_context, eval_batch, rng):
  """Host-side evaluation set: fixed-size chunks, each from a single context."""
  idx, ctx, valid = [], [], []
  for c, members in enumerate(members_per_context):
    n = min(len(members), size_per_context) if size_per_context else len(members)
    padded = -(-n // eval_batch) * eval_batch
    i, v = batch_lib.padded_members(members if n == len(members) else
                                    rng.choice(members, n, replace=False), padded, rng)
    idx.append(i.reshape(-1, eval_batch))
    valid.append(v.reshape(-1, eval_batch))
    ctx.append(np.full_like(idx[-1], c))
  return tuple(jnp.asarray(np.concatenate(a)) for a in (idx, ctx, valid))


def run(method, contexts, layout, params, tx, settings: RunSettings = RunSettings(),
        log: Optional[Callable[[str], None]] = None) -> ContinualResult:
  """Trains `method` on `contexts` (laid out by `layout`) and evaluates it (see module doc)."""
  settings.check()
  check_compatible(method, settings.stream)
  if method.separate_heads != layout.separate_heads:
    raise ValueError(f"{method.name}: the output layout must use separate heads exactly when "
                     "the method does")
  start = time.time()
  t_count, s = contexts.n_contexts, settings.steps_per_context
  k, b = settings.eval_every, settings.batch_size
  arrays = batch_lib.to_device(contexts, layout)
  kw = dict(input_shape=contexts.data.input_shape, transform=contexts.transforms_inputs)
  rng = np.random.default_rng(settings.seed)
  key, k_init, k_hooks = jax.random.split(jax.random.key(settings.seed), 3)

  jit = functools.partial(jax.jit, compiler_options=settings.compiler_options)
  probe = batch_lib.Batch(                      # shapes only, for the methods' init
      x=jnp.zeros((1,) + tuple(contexts.data.input_shape), jnp.float32),
      y=jnp.zeros((1,), jnp.int32), mask=jnp.asarray(layout.train_mask[:1]),
      context=jnp.zeros((1,), jnp.int32), valid=jnp.ones((1,), bool))
  if method.init_params is not None:
    params = jit(method.init_params)(params, probe, k_init)
  state = jit(method.init_state)(params, probe)
  opt_state = jit(tx.init)(params)
  step_fn = train_step_lib.make_train_step(method, tx)

  @jit
  def train_chunk(params, opt_state, state, pairs, step0, context, key):
    def body(carry, xs):
      params, opt_state, state = carry
      pair, i = xs
      step = step0 + i
      batch = batch_lib.gather(arrays, pair[:, 0], pair[:, 1], split="train", **kw)
      info = StepInfo(step=step, step_in_context=step - jnp.maximum(context, 0) * s,
                      context=context)
      params, opt_state, state, loss = step_fn(params, opt_state, state, batch, info,
                                               jax.random.fold_in(key, step))
      return (params, opt_state, state), loss
    (params, opt_state, state), loss = jax.lax.scan(
        body, (params, opt_state, state), (pairs, jnp.arange(pairs.shape[0])))
    return params, opt_state, state, loss.mean()

  @jit
  def evaluate(params, state, idx, ctx, valid):
    batch = batch_lib.gather(arrays, idx, ctx, valid, split="test", **kw)
    return losses.accuracy_counts(method.predict(params, state, batch), batch.y,
                                  batch.mask, batch.valid)

  def accuracies(params, state, eval_set):
    """Accuracy per context; every chunk has the same shape, so one compile serves all."""
    counts = [evaluate(params, state, *chunk) for chunk in zip(*eval_set)]
    correct, total = (np.array([float(c[i]) for c in counts]) for i in range(2))
    chunk_ctx = np.asarray(eval_set[1][:, 0])
    return (np.bincount(chunk_ctx, correct, minlength=t_count)
            / np.maximum(np.bincount(chunk_ctx, total, minlength=t_count), 1))

  @jit
  def end_context(params, state, idx, valid, context, key):
    data = batch_lib.gather(arrays, idx, jnp.full(idx.shape, context, jnp.int32), valid,
                            split="train", **kw)
    return method.end_context(params, state, data, context, key)

  begin_context = jit(method.begin_context) if method.begin_context else None

  eval_size = min(settings.eval_batch, settings.curve_examples)
  full_set = _eval_chunks(contexts.test_members, 0, eval_size, rng)
  curve_set = _eval_chunks(contexts.test_members, settings.curve_examples, eval_size, rng)
  chunk_kw = dict(batch_size=b, steps_per_chunk=k, seed=settings.seed)
  if method.interleaved:
    stream = streams_lib.interleaved_stream(contexts, total_steps=t_count * s, **chunk_kw)
  elif settings.stream == "task_free":
    stream = streams_lib.task_free_stream(contexts, steps_per_context=s,
                                          boundary_width=settings.boundary_width, **chunk_kw)
  else:
    stream = streams_lib.task_based_stream(contexts, steps_per_context=s, **chunk_kw)
  hooks = settings.stream == "task_based" and not method.interleaved

  random_init = accuracies(params, state, full_set)
  r = np.zeros((t_count, t_count))
  curve_steps, curve_acc = [0], [accuracies(params, state, curve_set)]
  if hooks and begin_context is not None:
    state = begin_context(params, state, jnp.int32(0))
  for chunk in range(len(stream)):
    step0 = chunk * k
    context = step0 // s if hooks else -1
    params, opt_state, state, loss = train_chunk(
        params, opt_state, state, jnp.asarray(stream[chunk]), jnp.int32(step0),
        jnp.int32(context), key)
    step = step0 + k
    if step % s == 0:
      finished = step // s - 1
      if hooks and method.end_context is not None and (finished + 1 < t_count
                                                       or method.end_context_at_last):
        idx, valid = batch_lib.padded_members(contexts.train_members[finished],
                                              settings.consolidation_examples, rng)
        params, state = end_context(params, state, jnp.asarray(idx), jnp.asarray(valid),
                                    jnp.int32(finished), jax.random.fold_in(k_hooks, step))
      r[finished] = accuracies(params, state, full_set)
      if log:
        log(f"{method.name}: context {finished + 1}/{t_count} done at step {step}, "
            f"loss {float(loss):.3f}, accuracy {np.round(r[finished], 3).tolist()}")
      if hooks and begin_context is not None and finished + 1 < t_count:
        state = begin_context(params, state, jnp.int32(finished + 1))
    curve_steps.append(step)
    curve_acc.append(accuracies(params, state, curve_set))
  return ContinualResult(
      accuracy_matrix=r, random_init_accuracy=random_init,
      curve_steps=np.asarray(curve_steps), curve_accuracy=np.stack(curve_acc),
      boundary_steps=(np.arange(t_count) + 1) * s, seconds=time.time() - start)
