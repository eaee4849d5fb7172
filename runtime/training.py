"""A language model's training setup: the validated config, the mesh, the abstract model,
the train state and the train step (the loop that runs it is `runtime.loop`).

The train state is a plain pytree {params, opt_state, step, rng}. The step is one
`jax.jit` with explicit in/out shardings (parameters placed by the config's logical-axis
rules, the batch split over `data` x `fsdp`) and the state buffers donated. Everything the
user gives is validated by `prepare` before the first compile.
"""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from hope.optimizers.tree_paths import named_leaves
from memory_layers.value_learning_rate import value_table_labels
from runtime import config_schema
from runtime import mesh as mesh_lib
from runtime import models
from runtime import optimizers
from runtime import text_data
from runtime.errors import UsageError


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


def prepare(config: ml_collections.ConfigDict, *, mesh_sizes: dict | None = None,
            tokenizer=None) -> Run:
  """Validates the config, builds the mesh and the abstract model: no compile, no writes.
  config.model.vocab_size must be `tokenizer`'s (default: config.data.source's tokenizer)."""
  config_schema.check_lm(config)
  rules = mesh_lib.check_rules(dict(config.axis_rules))
  mesh = mesh_lib.make_mesh(mesh_sizes or dict(config.mesh),
                            "--mesh" if mesh_sizes else "config.mesh")
  data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  for n, what in ((data_shards, "the mesh's data x fsdp size"),
                  (jax.process_count(), "the number of processes")):
    if config.batch_size % n:
      raise UsageError(f"config.batch_size ({config.batch_size}) must be divisible by {what} ({n})")
  tokenizer = tokenizer or text_data.tokenizer_for(config.data.source)
  if config.model.get("vocab_size", text_data.VOCAB_SIZE) != tokenizer.vocab_size:
    raise UsageError(f"config.model.vocab_size ({config.model.get('vocab_size')}) does not match "
                     f"the {tokenizer.name} tokenizer of config.data.source "
                     f"({tokenizer.vocab_size} ids)")
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
  """Linear warm-up from 0 to learning_rate over warmup_steps, then cosine decay to a tenth of
  it at config.steps (with warmup_steps = steps: the warm-up alone)."""
  if config.warmup_steps == config.steps:
    return optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, config.steps, config.learning_rate / 10)


def optimizer(config, run: Run, schedule: optax.Schedule | None = None):
  """The step optimizer of `config.optimizer` (`runtime.optimizers`: a rule per parameter
  group, each at its own period) on `schedule` (default: `learning_rate_schedule(config)`),
  after global-norm clipping. The default is AdamW (b2 = 0.95) with decay on matrices only;
  `run` gives the parameters' paths (for the groups) and kinds (for the value tables)."""
  return optimizers.build(config.optimizer, run.abstract_params,
                          learning_rate=schedule or learning_rate_schedule(config),
                          weight_decay=config.weight_decay, grad_clip=config.grad_clip,
                          value_tables=run.value_tables)


def state_shardings(run: Run, tx) -> dict:
  replicated = NamedSharding(run.mesh, P())
  opt = optimizers.opt_state_shardings(tx, run.abstract_params, run.param_shardings, replicated)
  return dict(params=run.param_shardings, opt_state=opt, step=replicated, rng=replicated)


def init_state(run: Run, tx, seed=None) -> dict:
  """The initial train state of `seed` (an int or a traced int32; default config.seed)."""
  seed = run.config.seed if seed is None else seed
  model = models.build(run.config.model.to_dict(), seed, run.rules)
  params = nnx.to_pure_dict(nnx.state(model))
  return dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
              rng=jax.random.PRNGKey(seed))


def loss_fn(run: Run, params, tokens, rng=None, weights=None):
  """Next-token cross-entropy (nats) of tokens[:, 1:] given tokens[:, :-1]: the mean over
  every position, or with `weights` [batch, seq_len] the weighted mean
  sum(w * ce) / sum(w) (e.g. 0/1 weights to score only some targets)."""
  return model_loss(nnx.merge(run.graphdef, params), tokens, rng, weights)


def model_loss(model, tokens, rng=None, weights=None):
  """`loss_fn` of a merged model."""
  logits = model(tokens[:, :-1], rng)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  if weights is None:
    return ce.mean()
  return (ce * weights).sum() / jnp.maximum(weights.sum(), 1e-9)


def make_train_step(run: Run, tx, shardings: dict, schedule: optax.Schedule | None = None):
  """The jitted step: state and batch in their shardings, the state's buffers donated. The
  batch is tokens [batch, seq_len + 1] or (tokens, loss weights [batch, seq_len]) (`loss_fn`).

  `tx` is a step optimizer (`runtime.optimizers.StepOptimizer` or
  `memory_layers.row_sparse.RowSparseValueOptimizer`; a plain optax transformation is
  wrapped): it computes the loss and gradients, and proposes an update together with the
  quantities to check.

  Numeric guard: when the loss, a gradient or an updated parameter is not finite, the step
  keeps the previous parameters and optimizer state (only `step` advances), so no poisoned
  state is ever produced or checkpointed. `metrics["nonfinite"]` is -1 for a good step, else
  the index in `nonfinite_names(run)` of the first non-finite quantity. (optax.apply_if_finite
  checks the updates only, not the loss or the updated parameters, cannot say which
  quantity failed, and adds counters to the optimizer state; hence this guard.)
  """
  tx = optimizers.as_step_optimizer(tx)
  schedule = schedule or learning_rate_schedule(run.config)

  def train_step(state, batch):
    tokens, weights = batch if isinstance(batch, tuple) else (batch, None)
    rng = jax.random.fold_in(state["rng"], state["step"])
    loss, grads = tx.value_and_grad(lambda model: model_loss(model, tokens, rng, weights),
                                    run.graphdef, state["params"])
    checked, grad_norm, commit = tx.update(grads, state["opt_state"], state["params"])
    finite = jnp.stack([jnp.isfinite(loss)] + [jnp.isfinite(x).all() for x in checked])
    ok = finite.all()
    params, opt_state = commit(ok)
    metrics = dict(loss=loss, grad_norm=grad_norm,
                   learning_rate=schedule(state["step"]),
                   nonfinite=jnp.where(ok, -1, jnp.argmin(finite)))
    return dict(params=params, opt_state=opt_state, step=state["step"] + 1,
                rng=state["rng"]), metrics

  return jax.jit(train_step, in_shardings=(shardings, run.batch_sharding),
                 out_shardings=(shardings, NamedSharding(run.mesh, P())), donate_argnums=0)


def nonfinite_names(run: Run) -> list[str]:
  """What `metrics["nonfinite"]` indexes: the loss, each gradient, each updated parameter."""
  paths = [name for name, _ in named_leaves(run.abstract_params)]
  return ["the loss"] + [f"the gradient of {p}" for p in paths] + [
      f"parameter {p} after the update" for p in paths]


def initial_state(run: Run, tx, shardings: dict) -> dict:
  """A fresh train state, created directly in its shardings (call under jax.set_mesh)."""
  return jax.jit(lambda: init_state(run, tx), out_shardings=shardings)()


def global_batch(run: Run, local):
  """The global batch of this process's part: tokens [batch, seq_len + 1], or a tuple
  (tokens, weights [batch, seq_len]) for a weighted loss."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(run.batch_sharding, x),
                      local)
