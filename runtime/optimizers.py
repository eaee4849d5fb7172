"""The outer optimizer from `config.optimizer`: any rule per parameter group, at its own frequency.

  config.optimizer.rule          "adamw": the rule of every parameter no group claims; a rule
                                 of hope.optimizers or any optax rule by name ("sgd", "lion", ...)
  config.optimizer.kwargs        {"b1": 0.9, "b2": 0.95}: the rule's other arguments
  config.optimizer.every         1: that rule's period in steps (None: frozen)
  config.optimizer.accumulate    "sum" | "mean": gradients between two updates of a group
  config.optimizer.groups        {}: {name: {patterns, rule, kwargs, every, lr_scale}}, e.g. one
                                 group per CMS level; patterns are globs over parameter paths
                                 ("blocks/*/mlp/levels/1/*"; "*" also crosses "/")
  config.optimizer.value_lr_multiplier  1.0: extra factor on memory-layer value tables' updates
  config.optimizer.sparse_value_updates False: train the value tables with a row-sparse lazy
                                 AdamW (memory_layers.row_sparse) outside the rule above, which
                                 then never sees them; see `build_row_sparse`

Every rule gets `learning_rate` (the schedule, times the group's lr_scale; for a group updated
every k steps the schedule is read at the global step of each of its updates), and, if it
takes them, `weight_decay` and `mask` (decay on matrices only). Clipping by global norm comes
first. With no groups and every = 1 the result is `optax.chain(clip, rule)`. The defaults
(`experiments/configs/common.py`) are AdamW (b1 0.9, b2 0.95) for every parameter.

`build` returns an optax transformation; `runtime.training.make_train_step` runs it as a
`StepOptimizer`, or runs the row-sparse `RowSparseValueOptimizer` the flag above selects.
"""
import dataclasses
import fnmatch
import inspect

import jax
import ml_collections
import optax
from flax import nnx

from runtime.errors import UsageError
from hope import optimizers as nested
from hope.optimizers.multi_frequency import ACCUMULATE
from hope.optimizers.tree_paths import named_leaves, path_name
from memory_layers import row_sparse
from memory_layers.value_learning_rate import VALUE_TABLE

NESTED_RULES = {name: getattr(nested, name) for name in (
    "preconditioned_momentum", "delta_momentum", "deep_momentum", "muon",
    "delta_gradient_descent", "m3")}
DEFAULT_GROUP = "default"
GROUP_FIELDS = ("patterns", "rule", "kwargs", "every", "lr_scale")


def rule_factory(name: str, field: str):
  """The factory named `name`: a hope.optimizers rule, or an optax rule taking learning_rate."""
  if name in NESTED_RULES:
    return NESTED_RULES[name]
  factory = getattr(optax, name, None) if isinstance(name, str) else None
  if not callable(factory) or "learning_rate" not in _parameters(factory):
    raise UsageError(f"{field} must name an optimizer taking a learning rate: one of "
                     f"{sorted(NESTED_RULES)} or an optax rule such as 'adamw', 'sgd', 'lion'; "
                     f"got {name!r}")
  return factory


def _parameters(factory) -> set:
  try:
    return set(inspect.signature(factory).parameters)
  except (TypeError, ValueError):
    return set()


def _plain(value):
  """A ConfigDict (or dict) as plain dicts."""
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else dict(value)


def _decay_matrices(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _rule(name, kwargs, field, learning_rate, weight_decay):
  factory = rule_factory(name, f"{field}.rule")
  accepted = _parameters(factory)
  kwargs = dict(kwargs)
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise UsageError(f"{field}.kwargs: {name} takes no argument(s) {unknown}; it takes "
                     f"{sorted(accepted - {'learning_rate'})}")
  if "weight_decay" in accepted and "weight_decay" not in kwargs:
    kwargs["weight_decay"] = weight_decay
    if "mask" in accepted and "mask" not in kwargs:
      kwargs["mask"] = _decay_matrices
  if name in NESTED_RULES and callable(learning_rate):  # their rates are numbers: inject
    values = {n: p.default for n, p in inspect.signature(factory).parameters.items()} | kwargs
    static = [n for n, v in values.items() if isinstance(v, int) and not isinstance(v, bool)]
    return optax.inject_hyperparams(factory, static_args=static)(learning_rate=learning_rate,
                                                                 **kwargs)
  return factory(learning_rate=learning_rate, **kwargs)


def _scaled(learning_rate, scale: float, every: int):
  """The learning rate of a group updated every `every` steps: its n-th update (from 0) happens
  at global step every * (n + 1) - 1."""
  if not callable(learning_rate):
    return learning_rate * scale
  if scale == 1 and every == 1:
    return learning_rate
  return lambda n: scale * learning_rate(every * (n + 1) - 1)


def _check_every(every, field):
  if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every <= 0):
    raise UsageError(f"{field} must be a positive integer (update every k steps) or None "
                     f"(frozen), got {every!r}")


def group_labels(groups: dict, params) -> dict:
  """The group of each parameter (a pytree of names like params): the group whose pattern
  matches its path, else "default". A parameter matched by two groups, or a pattern that
  matches nothing, is a UsageError."""
  names = [name for name, _ in named_leaves(params)]
  labels, used = [], set()
  for path in names:
    hits = [(group, pattern) for group, spec in groups.items() for pattern in spec["patterns"]
            if fnmatch.fnmatchcase(path, pattern)]
    if len({g for g, _ in hits}) > 1:
      raise UsageError(f"config.optimizer.groups: parameter {path!r} is matched by several "
                       f"groups {hits}; make the patterns disjoint")
    used.update(hits)
    labels.append(hits[0][0] if hits else DEFAULT_GROUP)
  for group, spec in groups.items():
    for pattern in spec["patterns"]:
      if (group, pattern) not in used:
        raise UsageError(f"config.optimizer.groups.{group}.patterns: {pattern!r} matches no "
                         f"parameter; parameter paths look like {names[:3]}")
  return jax.tree.unflatten(jax.tree.structure(params), labels)


def _check_groups(groups) -> dict:
  checked = {}
  for name, spec in dict(groups).items():
    field = f"config.optimizer.groups.{name}"
    if name == DEFAULT_GROUP:
      raise UsageError(f"{field}: {DEFAULT_GROUP!r} is the name of the parameters no group "
                       f"claims (set config.optimizer.rule/every for them); rename the group")
    spec = dict(spec)
    unknown = sorted(set(spec) - set(GROUP_FIELDS))
    if unknown:
      raise UsageError(f"{field}: unknown field(s) {unknown}; a group has {list(GROUP_FIELDS)}")
    patterns = spec.get("patterns")
    if isinstance(patterns, str) or not patterns or not all(isinstance(p, str) for p in patterns):
      raise UsageError(f"{field}.patterns must be a non-empty tuple of path globs, got "
                       f"{patterns!r}")
    _check_every(spec.get("every", 1), f"{field}.every")
    checked[name] = dict(patterns=tuple(patterns), rule=spec.get("rule", "adamw"),
                         kwargs=dict(spec.get("kwargs", {})), every=spec.get("every", 1),
                         lr_scale=float(spec.get("lr_scale", 1.0)))
  return checked


def build(optimizer_config, params, *, learning_rate, weight_decay: float = 0.0,
          grad_clip: float = 0.0, value_tables=None):
  """The optax optimizer that `optimizer_config` (config.optimizer) describes.

  params: the parameters or their abstract shapes (e.g. `Run.abstract_params`): the groups'
    patterns are checked against their paths here, before anything compiles.
  learning_rate: a float or an optax schedule of the global step.
  value_tables: `memory_layers.value_learning_rate.value_table_labels(state)`, needed when
    value_lr_multiplier != 1.
  """
  c = optimizer_config
  if c.get("sparse_value_updates", False):
    return build_row_sparse(c, params, learning_rate=learning_rate, weight_decay=weight_decay,
                            grad_clip=grad_clip, value_tables=value_tables)
  if c.accumulate not in ACCUMULATE:
    raise UsageError(f"config.optimizer.accumulate must be one of {ACCUMULATE}, got "
                     f"{c.accumulate!r}")
  _check_every(c.every, "config.optimizer.every")
  groups = _check_groups(_plain(c.get("groups", {})))
  if not groups and c.every == 1:
    tx = _rule(c.rule, _plain(c.kwargs), "config.optimizer", learning_rate, weight_decay)
  else:
    specs = {DEFAULT_GROUP: dict(rule=c.rule, kwargs=_plain(c.kwargs), every=c.every,
                                 lr_scale=1.0), **groups}
    present = set(jax.tree.leaves(group_labels(groups, params)))
    specs = {n: s for n, s in specs.items() if n in present}  # "default" may claim nothing
    rules = {name: _rule(s["rule"], s["kwargs"], "config.optimizer" if name == DEFAULT_GROUP
                         else f"config.optimizer.groups.{name}",
                         _scaled(learning_rate, s["lr_scale"], s["every"] or 1), weight_decay)
             for name, s in specs.items()}
    tx = nested.multi_frequency(rules, lambda tree: group_labels(groups, tree),
                                {n: s["every"] for n, s in specs.items()}, c.accumulate)
  multiplier = c.get("value_lr_multiplier", 1.0)
  if multiplier != 1.0:
    if value_tables is None:
      raise UsageError("config.optimizer.value_lr_multiplier needs the value tables: pass "
                       "value_tables=memory_layers.value_learning_rate.value_table_labels(state)")
    mask = jax.tree.map(lambda label: label == VALUE_TABLE, value_tables)
    tx = optax.chain(tx, optax.masked(optax.scale(multiplier), mask))
  if grad_clip:
    return optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  return tx


FLAG = "config.optimizer.sparse_value_updates"


@dataclasses.dataclass(frozen=True)
class StepOptimizer:
  """An optax transformation as the train step uses it (`runtime.training.make_train_step`).

  A step optimizer has
    init(params) -> state;
    value_and_grad(loss_of_model, graphdef, params) -> (loss, grads), loss_of_model taking
      the merged model;
    update(grads, state, params) -> (checked, grad_norm, commit): the arrays whose
      finiteness decides whether the step is kept (every gradient, then every updated
      parameter, in `jax.tree.leaves(params)` order), the gradients' global norm, and
      commit(ok) -> (params, state): the update if ok, else the previous ones.
  `memory_layers.row_sparse.RowSparseValueOptimizer` is the other one.
  """
  tx: optax.GradientTransformation

  def init(self, params):
    return self.tx.init(params)

  def value_and_grad(self, loss_of_model, graphdef, params):
    return jax.value_and_grad(lambda p: loss_of_model(nnx.merge(graphdef, p)))(params)

  def update(self, grads, state, params):
    updates, new_state = self.tx.update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    commit = lambda ok: (optax.tree_utils.tree_where(ok, new_params, params),
                         optax.tree_utils.tree_where(ok, new_state, state))
    return (jax.tree.leaves(grads) + jax.tree.leaves(new_params), optax.tree.norm(grads),
            commit)


def as_step_optimizer(tx):
  """`tx` as a step optimizer: an optax transformation is wrapped in `StepOptimizer`."""
  return StepOptimizer(tx) if isinstance(tx, optax.GradientTransformation) else tx


def build_row_sparse(c, params, *, learning_rate, weight_decay: float, grad_clip: float,
                     value_tables) -> row_sparse.RowSparseValueOptimizer:
  """`memory_layers.row_sparse.RowSparseValueOptimizer` for config.optimizer `c` with `FLAG`
  set: the tables get a lazy AdamW, everything else the dense rule.

  The tables' lazy AdamW takes b1, b2 and eps from c.kwargs when given there (else 0.9, 0.999,
  1e-8), weight_decay (decoupled, on the rows updated) unless c.rule is "adam" (none), and
  learning rate = the schedule times c.value_lr_multiplier (what the multiplier does to dense
  Adam updates too). The rule, groups and periods apply to everything else. A model without
  value tables, a group that claims a table, or a period other than 1 for the tables is a
  UsageError.
  """
  if value_tables is None or VALUE_TABLE not in jax.tree.leaves(value_tables):
    raise UsageError(f"{FLAG}=True needs a model with memory-layer value tables (e.g. "
                     "model.name=memory_lm); this model has none")
  labels = jax.tree_util.tree_flatten_with_path(value_tables)[0]
  paths = tuple(tuple(k.key for k in path) for path, label in labels if label == VALUE_TABLE)
  named = [path_name(path) for path, label in labels if label == VALUE_TABLE]
  groups = _check_groups(_plain(c.get("groups", {})))
  if groups:
    claimed = {name: group for name, group in named_leaves(group_labels(groups, params))
               if group != DEFAULT_GROUP}
    taken = [(n, claimed[n]) for n in named if n in claimed]
    if taken:
      raise UsageError(f"{FLAG}=True trains the value tables with its own row-sparse lazy "
                       f"AdamW, but config.optimizer.groups claim {taken}; drop those patterns")
  if c.every != 1:
    raise UsageError(f"{FLAG}=True updates the value tables every step, so "
                     f"config.optimizer.every must be 1, got {c.every!r} (use groups for "
                     "slower parameters)")
  multiplier = c.get("value_lr_multiplier", 1.0)
  if not multiplier > 0:
    raise UsageError(f"{FLAG}=True scales the tables' lazy AdamW learning rate by "
                     f"config.optimizer.value_lr_multiplier, which must be positive; got "
                     f"{multiplier!r}")
  kwargs = _plain(c.kwargs)
  values = row_sparse.LazyAdamW(
      _scaled(learning_rate, multiplier, 1), b1=kwargs.get("b1", 0.9),
      b2=kwargs.get("b2", 0.999), eps=kwargs.get("eps", 1e-8),
      weight_decay=0.0 if c.rule == "adam" else kwargs.get("weight_decay", weight_decay))
  dense_config = ml_collections.ConfigDict(_plain(c))
  dense_config.sparse_value_updates = False
  dense_config.value_lr_multiplier = 1.0
  rest, _ = row_sparse.split_tables(params, list(paths))
  dense = build(dense_config, rest, learning_rate=learning_rate, weight_decay=weight_decay)
  return row_sparse.RowSparseValueOptimizer(dense, values, paths, grad_clip)


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params, param_shardings,
                        default):
  """Shardings for tx's state: a state leaf whose key path ends with a parameter's path and
  has that parameter's shape gets the parameter's sharding, any other leaf `default`.

  Unlike optax.tree_map_params this also handles optax.partition, optax.masked and
  multi_frequency, whose states hold masked copies of the parameter tree.
  """
  by_path = {tuple(path): (x.shape, sharding) for (path, x), sharding in zip(
      jax.tree_util.tree_flatten_with_path(abstract_params)[0], jax.tree.leaves(param_shardings))}

  def pick(path, x):
    for start in range(len(path)):
      shape, sharding = by_path.get(tuple(path[start:]), (None, None))
      if shape == x.shape:
        return sharding
    return default

  return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(tx.init, abstract_params))
