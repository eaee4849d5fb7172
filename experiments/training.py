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

from experiments import config_checks, data, mesh as mesh_lib, models
from experiments.checkpointing import Checkpoints
from experiments.cli import UsageError
from experiments.metrics_writer import MetricsWriter
from experiments.performance import reference_flops


@dataclasses.dataclass
class Run:
  """Everything derived from a config before any compile."""
  config: ml_collections.ConfigDict
  rules: dict  # logical axis -> mesh axes
  mesh: jax.sharding.Mesh
  graphdef: nnx.GraphDef
  abstract_params: dict
  param_shardings: dict
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
             param_shardings=shardings, flops_per_token=model.flops_per_token(config.seq_len),
             num_params=sum(x.size for x in jax.tree.leaves(abstract_params)))


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warm-up to learning_rate, then cosine decay to a tenth of it at the last step."""
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, config.steps, config.learning_rate / 10)


def optimizer(config) -> optax.GradientTransformation:
  """AdamW (b2 = 0.95) on the schedule, decay on matrices only, global-norm clipping."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(learning_rate_schedule(config), b1=0.9, b2=0.95,
                      weight_decay=config.weight_decay, mask=decay_mask)
  if config.grad_clip:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
  return adamw


def state_shardings(run: Run, tx: optax.GradientTransformation) -> dict:
  replicated = NamedSharding(run.mesh, P())
  abstract_opt = jax.eval_shape(tx.init, run.abstract_params)
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, run.param_shardings,
                              transform_non_params=lambda _: replicated)
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
  logits = run.apply(params, tokens[:, :-1], rng)
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def make_train_step(run: Run, tx, shardings: dict):
  """The jitted step: state and batch in their shardings, the state's buffers donated."""
  schedule = learning_rate_schedule(run.config)

  def train_step(state, tokens):
    rng = jax.random.fold_in(state["rng"], state["step"])
    loss, grads = jax.value_and_grad(lambda p: loss_fn(run, p, tokens, rng))(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads),
                   learning_rate=schedule(state["step"]))
    return dict(params=params, opt_state=opt_state, step=state["step"] + 1,
                rng=state["rng"]), metrics

  return jax.jit(train_step, in_shardings=(shardings, run.batch_sharding),
                 out_shardings=(shardings, NamedSharding(run.mesh, P())), donate_argnums=0)


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


def check_resumable(checkpoints_dir: Path, run: Run) -> int | None:
  """The latest checkpoint step, after checking it holds this model (else UsageError)."""
  if not checkpoints_dir.exists():
    return None
  ckpt = Checkpoints(checkpoints_dir, read_only=True)
  step = ckpt.latest_step()
  if step is None:
    return None
  saved_model = ckpt.config(step).get("model", {})
  wanted = json.loads(json.dumps(run.config.model.to_dict()))  # as saved: tuples are lists
  diffs = [f"model.{k}: {saved_model.get(k)!r} saved, {wanted.get(k)!r} requested"
           for k in sorted(set(saved_model) | set(wanted)) if saved_model.get(k) != wanted.get(k)]
  shapes = ckpt.param_shapes(step)
  expected = {"/".join(str(k.key) for k in path): tuple(x.shape) for path, x in
              jax.tree_util.tree_flatten_with_path(run.abstract_params)[0]}
  if diffs or shapes != expected:
    detail = "; ".join(diffs[:3]) or "parameter shapes differ"
    raise UsageError(f"--workdir {str(checkpoints_dir.parent)!r} holds a checkpoint (step {step}) "
                     f"of a different model ({detail}); use another --workdir")
  return step


def global_batch(run: Run, local: np.ndarray) -> jax.Array:
  return jax.make_array_from_process_local_data(run.batch_sharding, local)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the state."""
  run = prepare(config)
  corpus = data.load_corpus(config.data.source, config.data.validation_percent)
  dataset = data.lm_dataset(corpus.train, seq_len=config.seq_len, batch_size=config.batch_size,
                            seed=config.seed, shuffle=True, repeat=True,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
  workdir = check_workdir(workdir)
  resume_step = check_resumable(workdir / "checkpoints", run)

  tx = optimizer(config)
  shardings = state_shardings(run, tx)
  train_step = make_train_step(run, tx, shardings)
  logging.info("model %s: %.2fM parameters; data: %s; mesh %s", config.model.name,
               run.num_params / 1e6, corpus.description, dict(run.mesh.shape))

  ref_flops, ref_desc = reference_flops(jnp.dtype(config.model.get("dtype", "float32")))
  step_flops = 3 * run.flops_per_token * config.batch_size * config.seq_len
  logging.info("model FLOPs per step %.3g; utilisation reference: %s, %.3g FLOP/s",
               step_flops, ref_desc, ref_flops)

  ckpt = Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
  iterator = iter(dataset)
  with jax.set_mesh(run.mesh):
    if resume_step is None:
      state = initial_state(run, tx, shardings)
      start = 0
    else:
      target = abstract_state(run, tx, shardings)
      params, rest = ckpt.restore(resume_step, params=target["params"],
                                  train_state={k: target[k] for k in ("opt_state", "step", "rng")},
                                  data_iterator=iterator)
      state = dict(params=params, **rest)
      start = int(state["step"])
      logging.info("resumed from %s at step %d", ckpt.directory, start)

    writer = MetricsWriter(workdir, resume_step=start)
    timer_step, timer_start = None, None
    for step in range(start, config.steps):
      state, metrics = train_step(state, global_batch(run, next(iterator)))
      done = step + 1
      if timer_step is None:  # the first step compiles: time from its end
        jax.block_until_ready(metrics)
        timer_step, timer_start = done, time.perf_counter()
      if done % config.log_every == 0 or done == config.steps:
        metrics = jax.device_get(metrics)
        writer.write("metrics.jsonl", done, metrics)
        line = f"step {done}/{config.steps} loss {metrics['loss']:.4f}"
        if done > timer_step:
          elapsed = time.perf_counter() - timer_start
          steps_per_sec = (done - timer_step) / elapsed
          perf = dict(steps_per_sec=steps_per_sec,
                      tokens_per_sec=steps_per_sec * config.batch_size * config.seq_len,
                      mfu=steps_per_sec * step_flops / ref_flops,
                      eta_seconds=(config.steps - done) / steps_per_sec)
          writer.write("perf.jsonl", done, perf)
          line += (f" | {perf['steps_per_sec']:.2f} steps/s {perf['tokens_per_sec']:.0f} tokens/s"
                   f" MFU {100 * perf['mfu']:.1f}% ETA {perf['eta_seconds']:.0f}s")
        logging.info(line)
      if done % config.checkpoint_every == 0 or done == config.steps:
        ckpt.save(done, params=state["params"],
                  train_state={k: state[k] for k in ("opt_state", "step", "rng")},
                  data_iterator=iterator, config=config.to_dict())
    ckpt.wait()
    ckpt.close()
    writer.close()
  return state
