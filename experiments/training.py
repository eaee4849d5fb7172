"""Sharded language-model pretraining: state, train step and the loop.

The train state is a plain pytree {params, opt_state, step, rng}. The step is one
`jax.jit` with explicit in/out shardings (parameters placed by the config's logical-axis
rules, the batch split over `data` x `fsdp`) and the state buffers donated. Everything the
user gives is validated before the first compile; a run in a workdir that already holds
checkpoints resumes from the latest one, data position included.
"""
import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments import config_checks, data, mesh as mesh_lib, models, optimizers
from experiments.checkpointing import RESTORE_ERRORS, Checkpoints
from experiments.cli import RunStopped, UsageError
from experiments.metrics_writer import MetricsWriter
from experiments.performance import reference_flops
from memory_layers import row_sparse
from memory_layers.value_learning_rate import value_table_labels


@dataclasses.dataclass
class Run:
  """Everything derived from a config before any compile."""
  config: ml_collections.ConfigDict
  rules: dict  # logical axis -> mesh axes
  mesh: jax.sharding.Mesh
  graphdef: nnx.GraphDef
  abstract_params: dict
  param_shardings: dict
  value_tables: dict  # "value_table" at memory-layer value tables, "other" elsewhere
  flops_per_token: float  # forward
  num_params: int

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, mesh_lib.logical_to_mesh(P("batch"), self.rules))

  def apply(self, params, tokens, rng=None):
    return nnx.merge(self.graphdef, params)(tokens, rng)


def prepare(config: ml_collections.ConfigDict, *, mesh_sizes: dict | None = None) -> Run:
  """Validates the config, builds the mesh and the abstract model: no compile, no writes."""
  config_checks.check(config)
  rules = mesh_lib.check_rules(dict(config.axis_rules))
  mesh = mesh_lib.make_mesh(mesh_sizes or dict(config.mesh),
                            "--mesh" if mesh_sizes else "config.mesh")
  data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  for n, what in ((data_shards, "the mesh's data x fsdp size"),
                  (jax.process_count(), "the number of processes")):
    if config.batch_size % n:
      raise UsageError(f"config.batch_size ({config.batch_size}) must be divisible by {what} ({n})")
  if config.model.get("vocab_size", data.VOCAB_SIZE) != data.VOCAB_SIZE:
    raise UsageError(f"config.model.vocab_size must be {data.VOCAB_SIZE} for byte-level data, "
                     f"got {config.model.vocab_size}")
  model = nnx.eval_shape(lambda: models.build(config.model.to_dict(), config.seed, rules))
  graphdef, state = nnx.split(model)
  abstract_params = nnx.to_pure_dict(state)
  logical = nnx.to_pure_dict(nnx.get_partition_spec(state))
  shardings = mesh_lib.shardings(abstract_params, logical, rules, mesh)
  return Run(config=config, rules=rules, mesh=mesh, graphdef=graphdef, abstract_params=abstract_params,
             param_shardings=shardings, value_tables=value_table_labels(state),
             flops_per_token=model.flops_per_token(config.seq_len),
             num_params=sum(x.size for x in jax.tree.leaves(abstract_params)))


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warm-up to learning_rate, then cosine decay to a tenth of it at the last step."""
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, config.steps, config.learning_rate / 10)


def optimizer(config, run: Run) -> optax.GradientTransformation:
  """The outer optimizer of `config.optimizer` (experiments/optimizers.py: a rule per
  parameter group, each at its own period), on the schedule, after global-norm clipping.
  The default is AdamW (b2 = 0.95) with decay on matrices only; `run` gives the parameters'
  paths (for the groups) and kinds (for the value-table multiplier)."""
  return optimizers.build(config.optimizer, run.abstract_params,
                          learning_rate=learning_rate_schedule(config),
                          weight_decay=config.weight_decay, grad_clip=config.grad_clip,
                          value_tables=run.value_tables)


def state_shardings(run: Run, tx: optax.GradientTransformation) -> dict:
  replicated = NamedSharding(run.mesh, P())
  opt = optimizers.opt_state_shardings(tx, run.abstract_params, run.param_shardings, replicated)
  return dict(params=run.param_shardings, opt_state=opt, step=replicated, rng=replicated)


def abstract_state(run: Run, tx, shardings: dict) -> dict:
  shapes = jax.eval_shape(lambda: init_state(run, tx))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def init_state(run: Run, tx) -> dict:
  model = models.build(run.config.model.to_dict(), run.config.seed, run.rules)
  params = nnx.to_pure_dict(nnx.state(model))
  return dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
              rng=jax.random.PRNGKey(run.config.seed))


def loss_fn(run: Run, params, tokens, rng=None):
  """Mean next-token cross-entropy (nats) of tokens[:, 1:] given tokens[:, :-1]."""
  return model_loss(nnx.merge(run.graphdef, params), tokens, rng)


def model_loss(model, tokens, rng=None):
  """`loss_fn` of a merged model."""
  logits = model(tokens[:, :-1], rng)
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def make_train_step(run: Run, tx, shardings: dict):
  """The jitted step: state and batch in their shardings, the state's buffers donated.

  Numeric guard: when the loss, a gradient or an updated parameter is not finite, the step
  keeps the previous parameters and optimizer state (only `step` advances), so no poisoned
  state is ever produced or checkpointed. `metrics["nonfinite"]` is -1 for a good step, else
  the index in `nonfinite_names(run)` of the first non-finite quantity.

  With `config.optimizer.sparse_value_updates` (tx a `RowSparseValueOptimizer`) the value
  tables get row-sparse gradients and updates (`memory_layers.row_sparse`): nothing of their
  N rows is touched but the rows read this step.
  """
  schedule = learning_rate_schedule(run.config)
  sparse = isinstance(tx, optimizers.RowSparseValueOptimizer)

  def train_step(state, tokens):
    rng = jax.random.fold_in(state["rng"], state["step"])
    if sparse:
      loss, grads, reads = row_sparse.value_and_grad(
          lambda model: model_loss(model, tokens, rng), run.graphdef, state["params"])
      params, opt_state, finite, grad_norm = tx.step(state["params"], grads, reads,
                                                     state["opt_state"], loss)
      ok = finite.all()  # tx.step has already kept the previous state if not
    else:
      loss, grads = jax.value_and_grad(lambda p: loss_fn(run, p, tokens, rng))(state["params"])
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
      params = optax.apply_updates(state["params"], updates)
      grad_norm = optax.tree.norm(grads)
      finite = jnp.stack([jnp.isfinite(loss)] + [jnp.isfinite(x).all() for x in
                                                 jax.tree.leaves(grads) + jax.tree.leaves(params)])
      ok = finite.all()
      keep_if_bad = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
      params = keep_if_bad(params, state["params"])
      opt_state = keep_if_bad(opt_state, state["opt_state"])
    metrics = dict(loss=loss, grad_norm=grad_norm,
                   learning_rate=schedule(state["step"]),
                   nonfinite=jnp.where(ok, -1, jnp.argmin(finite)))
    return dict(params=params, opt_state=opt_state, step=state["step"] + 1,
                rng=state["rng"]), metrics

  return jax.jit(train_step, in_shardings=(shardings, run.batch_sharding),
                 out_shardings=(shardings, NamedSharding(run.mesh, P())), donate_argnums=0)


def nonfinite_names(run: Run) -> list[str]:
  """What `metrics["nonfinite"]` indexes: the loss, each gradient, each updated parameter."""
  paths = ["/".join(str(k.key) for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(run.abstract_params)[0]]
  return ["the loss"] + [f"the gradient of {p}" for p in paths] + [
      f"parameter {p} after the update" for p in paths]


def initial_state(run: Run, tx, shardings: dict) -> dict:
  """A fresh train state, created directly in its shardings (call under jax.set_mesh)."""
  return jax.jit(lambda: init_state(run, tx), out_shardings=shardings)()


def check_workdir(workdir: str) -> Path:
  """Creates the workdir if needed and proves it writable, or raises UsageError."""
  path = Path(os.path.expanduser(workdir)).absolute()  # orbax needs absolute paths
  if path.exists() and not path.is_dir():
    raise UsageError(f"--workdir {str(path)!r} is a file, not a directory")
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_probe_{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise UsageError(f"--workdir {str(path)!r} is not writable: {e.strerror}") from e
  return path


def check_resumable(checkpoints_dir: Path, run: Run) -> tuple[int | None, dict]:
  """The latest intact checkpoint step, after checking it holds this model (else UsageError),
  and {step: what is wrong} for the newer steps whose files fail their checksums."""
  if not checkpoints_dir.exists():
    return None, {}
  ckpt = Checkpoints(checkpoints_dir, read_only=True)
  corrupt = {}
  for step in sorted(ckpt.all_steps(), reverse=True):
    problem = ckpt.problem(step)
    if problem is None:
      try:
        _check_same_model(ckpt, step, run)
        return step, corrupt
      except RESTORE_ERRORS as e:  # a step without checksums whose metadata is damaged
        problem = _does_not_restore(e)
    corrupt[step] = problem
  return None, corrupt


def _check_same_model(ckpt: Checkpoints, step: int, run: Run) -> None:
  saved_model = ckpt.config(step).get("model", {})
  wanted = json.loads(json.dumps(run.config.model.to_dict()))  # as saved: tuples are lists
  diffs = [f"model.{k}: {saved_model.get(k)!r} saved, {wanted.get(k)!r} requested"
           for k in sorted(set(saved_model) | set(wanted)) if saved_model.get(k) != wanted.get(k)]
  shapes = ckpt.param_shapes(step)
  expected = {"/".join(str(k.key) for k in path): tuple(x.shape) for path, x in
              jax.tree_util.tree_flatten_with_path(run.abstract_params)[0]}
  if diffs or shapes != expected:
    detail = "; ".join(diffs[:3]) or "parameter shapes differ"
    raise UsageError(f"--workdir {str(ckpt.directory.parent)!r} holds a checkpoint (step {step}) "
                     f"of a different model ({detail}); use another --workdir")


def _does_not_restore(e: Exception) -> str:
  return f"it does not restore: {' '.join(str(e).split())[:300]}"


def restore_latest(ckpt: Checkpoints, run: Run, tx, shardings: dict, iterator,
                   step: int | None) -> dict | None:
  """The train state of the latest checkpoint that restores, from `step` down (the data
  iterator set to its position); a step that fails to restore is quarantined. None: none."""
  target = abstract_state(run, tx, shardings)
  while step is not None:
    try:
      params, rest = ckpt.restore(step, params=target["params"],
                                  train_state={k: target[k] for k in ("opt_state", "step", "rng")},
                                  data_iterator=iterator)
      logging.info("resumed from %s at step %d", ckpt.directory, step)
      return dict(params=params, **rest)
    except RESTORE_ERRORS as e:
      ckpt.quarantine(step, _does_not_restore(e))
      step, _ = check_resumable(ckpt.directory, run)
  return None


def global_batch(run: Run, local: np.ndarray) -> jax.Array:
  return jax.make_array_from_process_local_data(run.batch_sharding, local)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest intact checkpoint; returns the
  state. A non-finite step stops the run (`config.on_nonfinite='stop'`, exit status 3) or
  is skipped (`'skip'`, at most `config.max_consecutive_skips` in a row)."""
  run = prepare(config)
  corpus = data.load_corpus(config.data.source, config.data.validation_percent)
  dataset = data.lm_dataset(corpus.train, seq_len=config.seq_len, batch_size=config.batch_size,
                            seed=config.seed, shuffle=True, repeat=True,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
  workdir = check_workdir(workdir)
  resume_step, corrupt = check_resumable(workdir / "checkpoints", run)

  tx = optimizer(config, run)
  shardings = state_shardings(run, tx)
  train_step = make_train_step(run, tx, shardings)
  logging.info("model %s: %.2fM parameters; data: %s; mesh %s", config.model.name,
               run.num_params / 1e6, corpus.description, dict(run.mesh.shape))

  ref_flops, ref_desc = reference_flops(jnp.dtype(config.model.get("dtype", "float32")))
  step_flops = 3 * run.flops_per_token * config.batch_size * config.seq_len
  logging.info("model FLOPs per step %.3g; utilisation reference: %s, %.3g FLOP/s",
               step_flops, ref_desc, ref_flops)

  ckpt = Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
  for step, problem in sorted(corrupt.items()):
    ckpt.quarantine(step, problem)
  iterator = iter(dataset)
  guard = NonFiniteGuard(config, nonfinite_names(run))
  with jax.set_mesh(run.mesh):
    state = restore_latest(ckpt, run, tx, shardings, iterator, resume_step)
    if state is None:
      state = initial_state(run, tx, shardings)
    start = int(state["step"])

    writer = MetricsWriter(workdir, resume_step=start)
    try:
      state = _train_loop(config, run, train_step, state, start, iterator, ckpt, writer, guard,
                          step_flops / ref_flops)
    finally:  # a run that stops still completes the save in flight
      ckpt.wait()
      ckpt.close()
      writer.close()
  return state


def _train_loop(config, run: Run, train_step, state: dict, start: int, iterator,
                ckpt: Checkpoints, writer: MetricsWriter, guard: "NonFiniteGuard",
                mfu_per_step_per_sec: float) -> dict:
  """Steps from `start` to config.steps: logs, checks each step's numbers, checkpoints."""
  timer_step, timer_start = None, None
  previous = None  # the last step's (step, metrics), checked while this step runs
  for step in range(start, config.steps):
    state, metrics = train_step(state, global_batch(run, next(iterator)))
    done = step + 1
    if previous is not None:
      guard.check(*previous)
    previous = done, metrics
    if timer_step is None:  # the first step compiles: time from its end
      jax.block_until_ready(metrics)
      timer_step, timer_start = done, time.perf_counter()
    if done % config.log_every == 0 or done == config.steps:
      metrics = jax.device_get(metrics)
      writer.write("metrics.jsonl", done, {k: v for k, v in metrics.items() if k != "nonfinite"})
      line = f"step {done}/{config.steps} loss {metrics['loss']:.4f}"
      if done > timer_step:
        elapsed = time.perf_counter() - timer_start
        steps_per_sec = (done - timer_step) / elapsed
        perf = dict(steps_per_sec=steps_per_sec,
                    tokens_per_sec=steps_per_sec * config.batch_size * config.seq_len,
                    mfu=steps_per_sec * mfu_per_step_per_sec,
                    eta_seconds=(config.steps - done) / steps_per_sec)
        writer.write("perf.jsonl", done, perf)
        line += (f" | {perf['steps_per_sec']:.2f} steps/s {perf['tokens_per_sec']:.0f} tokens/s"
                 f" MFU {100 * perf['mfu']:.1f}% ETA {perf['eta_seconds']:.0f}s")
      logging.info(line)
    if done % config.checkpoint_every == 0 or done == config.steps:
      guard.check(*previous)  # a stop never leaves a checkpoint of its step behind
      previous = None
      ckpt.save(done, params=state["params"],
                train_state={k: state[k] for k in ("opt_state", "step", "rng")},
                data_iterator=iterator, config=config.to_dict())
      if not config.async_checkpoints:
        ckpt.wait()
  if previous is not None:
    guard.check(*previous)
  return state


class NonFiniteGuard:
  """Acts on the train step's `nonfinite` metric: stop, or skip (the step already kept the
  previous state) and stop after too many skips in a row."""

  def __init__(self, config, names: list[str]):
    self.skip = config.on_nonfinite == "skip"
    self.max_skips = config.max_consecutive_skips
    self.names = names
    self.skipped_in_a_row = 0

  def check(self, step: int, metrics: dict) -> None:
    index = int(metrics["nonfinite"])
    if index < 0:
      self.skipped_in_a_row = 0
      return
    what = f"step {step}: {self.names[index]} is not finite"
    if not self.skip:
      raise RunStopped(f"{what}; stopped (config.on_nonfinite='stop'), the parameters are "
                       "those before this step and no checkpoint of it was written")
    self.skipped_in_a_row += 1
    if self.skipped_in_a_row > self.max_skips:
      raise RunStopped(f"{what}; {self.skipped_in_a_row} non-finite steps in a row, more than "
                       f"config.max_consecutive_skips ({self.max_skips}): stopped")
    logging.warning("%s; step skipped (config.on_nonfinite='skip')", what)
