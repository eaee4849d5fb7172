"""runtime.continual: every method that serves language models trains a tiny LM through two
domains on a 4 x 2 mesh of fake devices, its state checkpointed with the run's, and a run
killed in the middle of the second domain resumes to the uninterrupted run's final state,
bit for bit (parameters, optimizer and method state)."""
import functools

import chex
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from cl_methods import registry
from runtime import continual, lm_methods, loop, text_data, training
from runtime.errors import UsageError
from experiments.configs import memory_lm
from memory_layers import lora
from tests.helpers import tiny_config

SPREAD_OVER_WORKERS = True
DOMAINS = [(np.arange(20_000) * 7919 % 251).astype(np.uint8),
           (np.arange(20_000) * 104_729 % 97 + 120).astype(np.uint8)]
HPARAMS = dict(fisher="sampled", buffer_size=16, alpha=0.5, beta=0.5, eps=1e-7, strength=10.0,
               gamma=0.9, damping=0.1, temperature=2.0, rank=2, learning_rate=1e-2,
               weight_decay=0.0, top_t=8)
CRASH = {"at": None}  # a batch index of the second domain that raises


def _config(method="finetune"):
  config = tiny_config(steps=6, checkpoint_every=4, log_every=3, async_checkpoints=False,
                       keep_checkpoints=10, **{"mesh.data": 4, "mesh.fsdp": 2})
  if method == "smf":  # a memory layer, 16^2 slots
    config.model = memory_lm.get_config("tiny").model
    config.model.update(dim=32, num_layers=2, num_heads=4, mlp_dim=64, memory_layers=(1,),
                        num_slots=256, key_dim=16, top_k=4, memory_heads=2)
  return config


def _phases(config):
  def crash_at(batch, count=[0]):
    count[0] += 1
    if CRASH["at"] is not None and count[0] >= CRASH["at"]:
      raise RuntimeError("simulated crash")
    return batch

  def data(i):
    return text_data.lm_dataset(DOMAINS[i], seq_len=config.seq_len, batch_size=config.batch_size,
                                seed=i, shuffle=True, repeat=True)

  examples = [np.stack([d[j * 32:j * 32 + config.seq_len + 1] for j in range(8)]).astype(np.int32)
              for d in DOMAINS]
  return [loop.Phase("a", data(0), 3, context=0, examples=examples[0]),
          loop.Phase("b", data(1).map(crash_at), 3, context=1, examples=examples[1],
                     learning_rate=optax.constant_schedule(1e-3))]


def test_lm_methods_are_those_that_serve_domain_il():
  assert set(continual.LM_METHODS) == {"finetune", "joint", "er", "derpp", "ewc", "online_ewc",
                                       "si", "mas", "lwf", "agem", "lora", "smf"}
  with pytest.raises(UsageError, match="packnet cannot train a language model"):
    continual.check_method("packnet")
  with pytest.raises(UsageError, match="unknown method 'magic'"):
    continual.check_method("magic")


@pytest.mark.parametrize("name", continual.LM_METHODS)
def test_method_trains_sharded_and_resumes_to_the_same_state(name, tmp_path):
  config = _config(name)
  run = training.prepare(config)
  assert dict(run.mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  names = continual.LM_ONLY[name] if name in continual.LM_ONLY else registry.ENTRIES[name].hparams
  hparams = {h: HPARAMS[h] for h in names}
  method = continual.build_method(name, run, hparams, n_contexts=2, steps_per_context=3, seed=0)
  phases = _phases(config)
  trainer = loop.Trainer(run, loop.run_schedule(config, phases), method)
  whole, _ = loop.train(run, phases, tmp_path / "whole", trainer=trainer)
  whole = jax.device_get(whole)
  with jax.set_mesh(run.mesh):
    start = jax.device_get(trainer.initial_state())
  for part in ("params", "method"):  # both have moved from their start (a stateless method's
    # state has no leaves)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(whole[part]),
                                                      jax.tree.leaves(start[part]))]
    assert any(moved) or not moved, (name, part)
  CRASH["at"] = 2  # step 5, after the checkpoint at step 4
  try:
    with pytest.raises(RuntimeError, match="simulated crash"):
      loop.train(run, _phases(config), tmp_path / "killed", trainer=trainer)
  finally:
    CRASH["at"] = None
  resumed, _ = loop.train(run, _phases(config), tmp_path / "killed", trainer=trainer)
  chex.assert_trees_all_equal(jax.device_get(resumed), whole)


def test_lora_and_smf_refuse_models_they_cannot_serve():
  run = training.prepare(_config())
  with pytest.raises(UsageError, match="smf on transformer: the model .* has no memory layer"):
    continual.build_method("smf", run, dict(top_t=8, learning_rate=1.0), n_contexts=2,
                           steps_per_context=3, seed=0)


def test_lora_trains_only_a_low_rank_update_after_the_first_context(tmp_path):
  config = _config()
  run = training.prepare(config)
  method = continual.build_method("lora", run, dict(rank=2, alpha=0.0, learning_rate=1e-2,
                                                   weight_decay=0.0),
                                  n_contexts=2, steps_per_context=3, seed=0)
  phases = _phases(config)
  trainer = loop.Trainer(run, loop.run_schedule(config, phases), method)
  state, _ = loop.train(run, phases, tmp_path, trainer=trainer)
  state = jax.device_get(state)
  targets = lora.lora_targets(nnx.merge(run.graphdef, run.abstract_params),
                              lm_methods.LORA_TARGETS)
  get = lambda tree, path: functools.reduce(lambda t, k: t[k], path, tree)
  moved = []
  for path, _ in jax.tree_util.tree_flatten_with_path(state["params"])[0]:
    keys = tuple(k.key for k in path)
    delta = get(state["params"], keys) - get(state["method"].base, keys)
    if np.any(delta):
      moved.append(keys)
      n_in = targets[keys]  # only the target matrices move, each by a rank <= 2 update
      matrix = np.asarray(delta).reshape(int(np.prod(delta.shape[:n_in])), -1)
      singular = np.linalg.svd(matrix, compute_uv=False)  # beyond 2: float32 rounding only
      assert singular[2] < 1e-3 * singular[0], (path, singular[:4])
  assert len(moved) == len(targets)
