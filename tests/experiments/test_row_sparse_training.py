"""config.optimizer.sparse_value_updates: the trainer's row-sparse value tables (lazy AdamW)."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import data, training
from experiments.checkpointing import Checkpoints
from experiments.cli import UsageError
from experiments.configs import memory_lm
from tests.helpers import tiny_config

TABLE = ("blocks", 0, "mlp", "values", "table")  # one pool, shared by blocks 0 and 1


def _config(**overrides):
  config = memory_lm.get_config("tiny")
  config.update(dict(steps=8, batch_size=8, seq_len=32, log_every=4, checkpoint_every=4,
                     warmup_steps=2, eval_batches=2, async_checkpoints=False))
  config.model.update(dict(dim=32, num_layers=2, num_heads=4, mlp_dim=64, memory_layers=(0, 1),
                           num_slots=64 ** 2, key_dim=16, top_k=4, memory_heads=2))
  config.optimizer.sparse_value_updates = True
  config.mesh.update(dict(data=2, fsdp=2, tensor=2))  # table rows over fsdp, columns over tensor
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


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
  return shardings, table, jax.device_get(state), jax.device_get(metrics)


def test_first_step_sharded_equals_dense_adamw_on_one_device():
  """Without weight decay, Adam's first step moves an unread row by 0 either way, so the
  row-sparse step on the 2 x 2 x 2 mesh equals the dense AdamW step on one device."""
  tokens = np.random.default_rng(0).integers(0, 256, (8, 33)).astype(np.int32)
  # eps 1e-3: Adam's first step is about lr * sign(g), which float summation order flips
  # for the smallest gradients; a larger eps makes it a smooth function of g.
  common = {"weight_decay": 0.0, "grad_clip": 0.05, "warmup_steps": 0,
            "optimizer.kwargs.eps": 1e-3}
  shardings, table, sparse, sparse_metrics = _first_step(_config(**common), tokens)
  _, _, dense, dense_metrics = _first_step(
      _config(**common, **{"optimizer.sparse_value_updates": False, "mesh.fsdp": 1,
                           "mesh.tensor": 1, "mesh.data": 1}), tokens)
  # The table and its moments are split 2 (rows, fsdp) x 2 (columns, tensor).
  for s in (shardings["params"], shardings["opt_state"]["values"]["mu"]):
    table_sharding = s["blocks"][0]["mlp"]["values"]["table"]
    assert table_sharding.shard_shape((4096, 32)) == (2048, 16)
  np.testing.assert_allclose(sparse_metrics["loss"], dense_metrics["loss"], rtol=1e-6)
  np.testing.assert_allclose(sparse_metrics["grad_norm"], dense_metrics["grad_norm"], rtol=1e-4)
  assert dense_metrics["grad_norm"] > 0.05  # clipping is on
  chex.assert_trees_all_close(sparse["params"], dense["params"], rtol=1e-4, atol=1e-6)
  moved = np.abs(sparse["params"]["blocks"][0]["mlp"]["values"]["table"] - table).max(1) > 0
  assert 0 < moved.sum() < 4096  # some rows were read, some not


def test_trains_and_restores_identical_state_on_the_mesh(tmp_path):
  config = _config()
  state = jax.device_get(training.train(config, str(tmp_path)))
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [4, 8] and rows[-1]["loss"] < rows[0]["loss"]
  mu = state["opt_state"]["values"]["mu"]["blocks"][0]["mlp"]["values"]["table"]
  assert 0 < (np.abs(mu).max(axis=1) > 0).sum() < 4096  # moments only where rows were read
  assert int(state["opt_state"]["values"]["count"]) == 8
  # The checkpoint restores (onto the 2 x 2 x 2 mesh, in the state's shardings) to the same
  # parameters and optimizer state, the lazy Adam moments included, bit for bit.
  run = training.prepare(config)
  tx = training.optimizer(config, run)
  shardings = training.state_shardings(run, tx)
  ckpt = Checkpoints(tmp_path / "checkpoints", read_only=True)
  corpus = data.load_corpus(config.data.source, config.data.validation_percent)
  iterator = iter(data.lm_dataset(corpus.train, seq_len=config.seq_len,
                                  batch_size=config.batch_size, seed=config.seed, shuffle=True,
                                  repeat=True))
  with jax.set_mesh(run.mesh):
    restored = training.restore_latest(ckpt, run, tx, shardings, iterator, 8)
  table = restored["params"]["blocks"][0]["mlp"]["values"]["table"]
  assert table.sharding.shard_shape(table.shape) == (2048, 16)
  chex.assert_trees_all_equal(jax.device_get(restored), state)
