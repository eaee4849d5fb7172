"""Per-group update frequencies: CMS's schedule (NeurIPS eq. 31 / arXiv eq. 71) for optax rules.

Group (level) l is updated by its own rule every k_l steps, on the gradients gathered since
its last update:

  theta_l <- theta_l + rule_l( sum_{s in window} g_s )      when step = 0 mod k_l (1-based)
  theta_l unchanged                                          otherwise

(`accumulate="mean"` divides the sum by k_l). k_l = None freezes the group: its update is
always zero and it keeps no state. Between its steps a group's update is exactly zero (no
weight decay either), and its rule sees one step per group update, so the rule's own count
(bias corrections, schedules) advances k_l times slower than the global step; to follow the
global step, give the rule the schedule `lambda n: schedule(k_l * (n + 1) - 1)`
(runtime.optimizers does this).

Groups follow optax.partition's convention: each rule sees the parameter tree with the other
groups' leaves replaced by optax.MaskedNode(). The state is a plain pytree,

  {"step": int32 [], "levels": {name: {"accumulated": masked gradient sum (k > 1 only),
                                       "inner": the rule's state}}},

so orbax saves and restores it as it is.

Why not `optax.partition` of `optax.MultiSteps`: MultiSteps averages the gradients (CMS
sums them, eq. 71), keeps a mini-step counter and a copy of the accumulator per group
(one global step counter serves every group here), and its `every_k_schedule` cannot
freeze a group (k = None).
"""
import jax
import jax.numpy as jnp
import optax

from hope.optimizers.tree_paths import named_leaves

ACCUMULATE = ("sum", "mean")


def _check_every(level_rules: dict, every: dict) -> None:
  if set(every) != set(level_rules):
    missing = sorted(set(level_rules) - set(every))
    unknown = sorted(set(every) - set(level_rules))
    raise ValueError(f"every must give a period for each level of level_rules and no other: "
                     f"missing {missing}, unknown {unknown}")
  for name, k in every.items():
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
      raise ValueError(f"every[{name!r}] must be a positive integer (update every k steps) or "
                       f"None (frozen), got {k!r}")


def _labels(level_of_param, params, level_rules: dict):
  """The label tree for params, checked: same structure, every label a known level."""
  labels = level_of_param(params) if callable(level_of_param) else level_of_param
  names = dict(named_leaves(params))
  label_names = dict(named_leaves(labels))
  missing = [n for n in names if n not in label_names]
  unknown = [n for n in label_names if n not in names]
  if missing or unknown:
    raise ValueError(f"level_of_param must name a level for every parameter and no other: "
                     f"parameters without a level {missing[:5]}, labels for parameters that "
                     f"do not exist {unknown[:5]}")
  bad = {n: l for n, l in label_names.items() if l not in level_rules}
  if bad:
    raise ValueError(f"level_of_param names levels that are not in level_rules "
                     f"({sorted(level_rules)}): {dict(list(bad.items())[:5])}")
  empty = sorted(set(level_rules) - set(label_names.values()))
  if empty:
    raise ValueError(f"levels {empty} of level_rules have no parameters")
  return jax.tree.unflatten(jax.tree.structure(params), [label_names[n] for n in names])


def _mask(tree, labels, name):
  return jax.tree.map(lambda l, x: x if l == name else optax.MaskedNode(), labels, tree)


def multi_frequency(level_rules: dict, level_of_param, every: dict,
                    accumulate: str = "sum") -> optax.GradientTransformation:
  """Gives each parameter group its own optax rule applied every k steps (module docstring).

  level_rules: {level name: optax.GradientTransformation}.
  level_of_param: a pytree of level names with the params' structure, or a function of the
    params returning one.
  every: {level name: k >= 1, or None to freeze the level}.
  accumulate: "sum" or "mean" of the gradients since the level's last update.
  """
  _check_every(level_rules, every)
  if accumulate not in ACCUMULATE:
    raise ValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
  rules = {name: optax.with_extra_args_support(rule) for name, rule in level_rules.items()}

  def init(params):
    if not jax.tree.leaves(params):  # optax.tree_map_params' placeholder: no structure to split
      levels = {name: {"inner": rules[name].init(params)} for name in rules}
      levels = {name: level | ({"accumulated": params} if every[name] > 1 else {})
                for name, level in levels.items() if every[name] is not None}
      return {"step": jnp.zeros((), jnp.int32), "levels": levels}
    labels = _labels(level_of_param, params, level_rules)
    levels = {}
    for name, k in every.items():
      if k is None:
        continue
      masked = _mask(params, labels, name)
      levels[name] = {"inner": rules[name].init(masked)}
      if k > 1:
        levels[name]["accumulated"] = optax.tree.zeros_like(masked)
    return {"step": jnp.zeros((), jnp.int32), "levels": levels}

  def update(updates, state, params=None, **extra_args):
    labels = _labels(level_of_param, updates, level_rules)
    step = state["step"] + 1
    out = jax.tree.map(jnp.zeros_like, updates)
    levels = {}
    for name, level in state["levels"].items():
      k, rule = every[name], rules[name]
      grads = _mask(updates, labels, name)
      masked_params = None if params is None else _mask(params, labels, name)
      if k == 1:
        new, inner = rule.update(grads, level["inner"], masked_params, **extra_args)
        levels[name] = {"inner": inner}
      else:
        total = jax.tree.map(jnp.add, level["accumulated"], grads)

        def fire(total=total, level=level, rule=rule, masked_params=masked_params, k=k):
          window = total if accumulate == "sum" else jax.tree.map(lambda g: g / k, total)
          new, inner = rule.update(window, level["inner"], masked_params, **extra_args)
          return new, inner, jax.tree.map(jnp.zeros_like, total)

        def wait(total=total, level=level):
          return jax.tree.map(jnp.zeros_like, total), level["inner"], total

        new, inner, total = jax.lax.cond(step % k == 0, fire, wait)
        levels[name] = {"inner": inner, "accumulated": total}
      out = jax.tree.map(lambda l, o, n: n if l == name else o, labels, out, new)
    return out, {"step": step, "levels": levels}

  return optax.GradientTransformationExtraArgs(init, update)
