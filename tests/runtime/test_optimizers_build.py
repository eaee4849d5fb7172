"""runtime.optimizers: config.optimizer -> optax, per parameter group and frequency."""
import shutil

import chex
import jax
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments.configs import common
from runtime import optimizers
from runtime import loop
from runtime import training
from runtime.errors import UsageError
from tests.helpers import tiny_config

CONFIG = tiny_config()
RUN = training.prepare(CONFIG)
SCHEDULE = training.learning_rate_schedule(CONFIG)


def _build(optimizer_config, **kwargs):
  return optimizers.build(optimizer_config, RUN.abstract_params, learning_rate=SCHEDULE,
                          weight_decay=CONFIG.weight_decay, grad_clip=CONFIG.grad_clip, **kwargs)


def _random_like(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), tree)


PARAMS = _random_like(RUN.abstract_params, 99)
GRADS = [_random_like(RUN.abstract_params, t) for t in range(3)]


def _steps(tx, n=3):
  """tx's updates over n steps (params moved by each) and its final state, in one compile."""
  def body(carry, grads):
    params, state = carry
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), updates

  stacked = jax.tree.map(lambda *g: np.stack(g), *GRADS[:n])
  run = jax.jit(lambda p, g: jax.lax.scan(body, (p, tx.init(p)), g))
  (_, state), updates = run(PARAMS, stacked)
  return [jax.tree.map(lambda u: u[t], updates) for t in range(n)], state


def test_default_config_is_exactly_the_training_adamw():
  """The zoo's AdamW, as experiments.training built it before config.optimizer existed."""
  adamw = optax.chain(
      optax.clip_by_global_norm(CONFIG.grad_clip),
      optax.adamw(SCHEDULE, b1=0.9, b2=0.95, weight_decay=CONFIG.weight_decay,
                  mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)))
  chex.assert_trees_all_equal(_steps(_build(common.optimizer_config())), _steps(adamw))


def test_groups_get_their_rule_and_period_and_sharded_state():
  c = common.optimizer_config()
  c.groups = dict(
      slow=dict(patterns=("blocks/0/mlp/*",), rule="sgd", kwargs=dict(momentum=0.9), every=2),
      frozen=dict(patterns=("blocks/1/mlp/*", "embed/*"), every=None),
      muon=dict(patterns=("blocks/*/mixer/out/kernel",), rule="muon", lr_scale=0.5))
  with pytest.raises(ValueError, match="2-D matrices only.*blocks/0/mixer/out/kernel"):
    jax.eval_shape(_build(c).init, RUN.abstract_params)  # that kernel is [heads, hd, dim]
  c.groups.muon.patterns = ("blocks/0/mlp/down/kernel",)
  c.groups.slow.patterns = ("blocks/0/mlp/up/*", "blocks/0/mlp/gate/*")
  updates, _ = _steps(_build(c), n=2)
  slow = lambda u: u["blocks"][0]["mlp"]["up"]["kernel"]
  assert not np.any(slow(updates[0])) and np.all(np.isfinite(slow(updates[1])))
  assert np.any(slow(updates[1]))
  assert not any(np.any(u["embed"]["table"]) or np.any(u["blocks"][1]["mlp"]["up"]["kernel"])
                 for u in updates)
  shardings = optimizers.opt_state_shardings(_build(c), RUN.abstract_params, RUN.param_shardings,
                                             NamedSharding(RUN.mesh, P()))
  accumulated = shardings[1]["levels"]["slow"]["accumulated"]["blocks"][0]["mlp"]["up"]["kernel"]
  assert accumulated == RUN.param_shardings["blocks"][0]["mlp"]["up"]["kernel"]


@pytest.mark.parametrize("field, value, match", [
    ("rule", "adamww", r"config.optimizer.rule must name an optimizer.*'adamww'"),
    ("every", 0, r"config.optimizer.every must be a positive integer"),
    ("accumulate", "max", r"accumulate must be one of"),
    ("groups", dict(g=dict(patterns=("nothing/*",))), r"groups.g.patterns: 'nothing/\*' matches "
     r"no parameter"),
    ("groups", dict(a=dict(patterns=("embed/*",)), b=dict(patterns=("*/table",))),
     r"'embed/table' is matched by several groups"),
    ("groups", dict(g=dict(patterns=("embed/*",), every=-1)), r"groups.g.every must be a pos"),
    ("groups", dict(g=dict(patterns=("embed/*",), rule="sgd", kwargs=dict(beta=1))),
     r"groups.g.kwargs: sgd takes no argument\(s\) \['beta'\]"),
    ("value_lr_multiplier", 10.0, r"needs the value tables"),
])
def test_bad_optimizer_config_names_the_field(field, value, match):
  c = common.optimizer_config()
  c[field] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  with pytest.raises(UsageError, match=match):
    _build(c)


def test_pretraining_with_groups_resumes_exactly(tmp_path):
  """training.train with layer groups on their own periods (a multi_frequency state, sharded
  on 8 devices) checkpoints mid-cycle and resumes to the uninterrupted result."""
  config = tiny_config(steps=6, checkpoint_every=3, log_every=3)
  config.optimizer.groups = {"slow": dict(patterns=("blocks/1/*",), every=2),
                             "frozen": dict(patterns=("blocks/0/mlp/*",), every=None)}
  whole = loop.pretrain(config, str(tmp_path / "whole"))
  shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")  # as if killed after step 3
  resumed = loop.pretrain(config, str(tmp_path / "resumed"))
  chex.assert_trees_all_equal(jax.device_get(resumed["params"]), jax.device_get(whole["params"]))
  run = training.prepare(config)  # the initial state exactly as training.train makes it
  tx = training.optimizer(config, run)
  with jax.set_mesh(run.mesh):
    start = training.initial_state(run, tx, training.state_shardings(run, tx))["params"]
  chex.assert_trees_all_equal(whole["params"]["blocks"][0]["mlp"],
                              jax.device_get(start["blocks"][0]["mlp"]))
