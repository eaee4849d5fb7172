"""runtime.continual: every method that serves language models trains a tiny LM through two
domains on a 4 x 2 mesh of fake devices, its state checkpointed with the run's, and a run
killed in the middle of the second domain resumes to the uninterrupted run's final state,
bit for bit (parameters, optimizer and method state)."""
import chex
import jax
import numpy as np
import optax
import pytest

from cl_methods import registry
from runtime import continual, loop, text_data, training
from runtime.errors import UsageError
from tests.helpers import tiny_config

SPREAD_OVER_WORKERS = True
DOMAINS = [(np.arange(20_000) * 7919 % 251).astype(np.uint8),
           (np.arange(20_000) * 104_729 % 97 + 120).astype(np.uint8)]
HPARAMS = dict(buffer_size=16, alpha=0.5, beta=0.5, eps=1e-7, strength=10.0, gamma=0.9,
               damping=0.1, temperature=2.0)
CRASH = {"at": None}  # a batch index of the second domain that raises


def _config():
  return tiny_config(steps=6, checkpoint_every=4, log_every=3, async_checkpoints=False,
                     keep_checkpoints=10, **{"mesh.data": 4, "mesh.fsdp": 2})


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
                                       "si", "mas", "lwf", "agem"}
  with pytest.raises(UsageError, match="packnet cannot train a language model"):
    continual.check_method("packnet")
  with pytest.raises(UsageError, match="unknown method 'magic'"):
    continual.check_method("magic")


@pytest.mark.parametrize("name", continual.LM_METHODS)
def test_method_trains_sharded_and_resumes_to_the_same_state(name, tmp_path):
  config = _config()
  run = training.prepare(config)
  assert dict(run.mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  hparams = {h: HPARAMS[h] for h in registry.ENTRIES[name].hparams}
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
