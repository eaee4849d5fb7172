"""config.optimizer.sparse_value_updates: the trainer's row-sparse value tables (lazy AdamW)."""
import json

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from runtime import text_data
from runtime import loop, training
from runtime.checkpoints import Checkpoints
from runtime.errors import UsageError
from experiments.configs import memory_lm
from tests.helpers import override, tiny_config

# Without weight decay, Adam's first step moves an unread row by 0, lazily or not; eps 1e-3
# makes the first step (about lr * sign(g) at eps 1e-8, which float summation order flips for
# the smallest gradients) a smooth function of g, so sharded and one-device runs compare.
COMPARABLE = {"weight_decay": 0.0, "grad_clip": 0.05, "optimizer.kwargs.eps": 1e-3}


def _config(**overrides):
  config = memory_lm.get_config("tiny")
  config.update(dict(steps=4, batch_size=8, seq_len=32, log_every=1, checkpoint_every=1,
                     keep_checkpoints=10, warmup_steps=0, eval_batches=2,
                     async_checkpoints=False))
  config.model.update(dict(dim=32, num_layers=2, num_heads=4, mlp_dim=64, memory_layers=(0, 1),
                           num_slots=64 ** 2, key_dim=16, top_k=4, memory_heads=2))
  config.optimizer.sparse_value_updates = True
  config.mesh.update(dict(data=2, fsdp=2, tensor=2))  # table rows over fsdp, columns over tensor
  return override(config, overrides)


@pytest.mark.parametrize("config, message", [
    (tiny_config(**{"optimizer.sparse_value_updates": True}),
     r"config.optimizer.sparse_value_updates=True needs a model with memory-layer value tables"),
    (_config(**{"optimizer.groups": {"mem": dict(patterns=("blocks/0/mlp/*",))}}),
     r"sparse_value_updates=True .* config.optimizer.groups claim \[\('blocks/0/mlp/values/table'"),
    (_config(**{"optimizer.value_lr_multiplier": 0.0}),
     r"sparse_value_updates=True scales the tables' lazy AdamW learning rate by "),
    (_config(**{"optimizer.every": 2}),
     r"sparse_value_updates=True updates the value tables every step, so config.optimizer.every"),
])
def test_bad_combinations_name_the_flag(config, message):
  with pytest.raises(UsageError, match=message):
    training.optimizer(config, training.prepare(config))


def _first_step(config, tokens):
  run = training.prepare(config)
  tx = training.optimizer(config, run)
  shardings = training.state_shardings(run, tx)
  with jax.set_mesh(run.mesh):
    state = training.initial_state(run, tx, shardings)
    table = jax.device_get(state["params"]["blocks"][0]["mlp"]["values"]["table"])
    state, metrics = training.make_train_step(run, tx, shardings)(
        state, training.global_batch(run, tokens))
  return table, jax.device_get(state), jax.device_get(metrics)


def _batches(config):
  corpus = text_data.load_corpus(config.data.source, config.data.validation_percent)
  return iter(text_data.lm_dataset(corpus.train, seq_len=config.seq_len,
                              batch_size=config.batch_size, seed=config.seed, shuffle=True,
                              repeat=True))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """4 steps of memory_lm (two layers, one shared pool) on the 2 x 2 x 2 mesh, checkpointed
  every step."""
  workdir = tmp_path_factory.mktemp("sparse_values")
  config = _config(**COMPARABLE)
  state = jax.device_get(loop.pretrain(config, str(workdir)))
  metrics = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return config, workdir, state, metrics


def test_first_step_sharded_equals_dense_adamw_on_one_device(trained):
  config, workdir, _, metrics = trained
  dense_config = _config(**COMPARABLE, **{"optimizer.sparse_value_updates": False,
                                          "mesh.fsdp": 1, "mesh.tensor": 1, "mesh.data": 1})
  table, dense, dense_metrics = _first_step(dense_config, next(_batches(config)))
  sparse = _int_keys(ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "1" / "params"))
  np.testing.assert_allclose(metrics[0]["loss"], dense_metrics["loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics[0]["grad_norm"], dense_metrics["grad_norm"], rtol=1e-4)
  assert dense_metrics["grad_norm"] > 0.05  # clipping is on
  chex.assert_trees_all_close(jax.tree.map(np.asarray, sparse), dense["params"], rtol=1e-4,
                              atol=1e-6)
  moved = np.abs(np.asarray(sparse["blocks"][0]["mlp"]["values"]["table"]) - table).max(1) > 0
  assert 0 < moved.sum() < 4096  # some rows were read, some not


def test_trains_and_restores_identical_state_on_the_mesh(trained):
  config, workdir, state, metrics = trained
  assert [r["step"] for r in metrics] == [1, 2, 3, 4]
  assert metrics[-1]["loss"] < metrics[0]["loss"]
  mu = state["opt_state"]["values"]["mu"]["blocks"][0]["mlp"]["values"]["table"]
  assert 0 < (np.abs(mu).max(axis=1) > 0).sum() < 4096  # moments only where rows were read
  assert int(state["opt_state"]["values"]["count"]) == 4
  # The last checkpoint restores onto the mesh, the table and its moments split 2 (rows,
  # fsdp) x 2 (columns, tensor), to the same parameters and optimizer state, bit for bit.
  run = training.prepare(config)
  ckpt = Checkpoints(workdir / "checkpoints", read_only=True)
  with jax.set_mesh(run.mesh):
    restored, _ = loop.restore_latest(ckpt, loop.Trainer(run), 4, lambda step: _batches(config))
  for tree in (restored["params"], restored["opt_state"]["values"]["mu"]):
    table = tree["blocks"][0]["mlp"]["values"]["table"]
    assert table.sharding.shard_shape(table.shape) == (2048, 16)
  chex.assert_trees_all_equal(jax.device_get(restored), state)


def _int_keys(tree):
  """orbax restores list indices as strings ("0"); the live params use ints."""
  if isinstance(tree, dict):
    return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v)
            for k, v in tree.items()}
  return tree
