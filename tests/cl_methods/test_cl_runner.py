"""The runner end to end on split digits: bounds, streams, every registered method."""
import dataclasses

import jax
import numpy as np
import optax
import pytest

from cl_methods import baselines
from cl_methods import benchmark_models
from cl_methods import datasets
from cl_methods import registry
from cl_methods import runner
from cl_methods import scenarios
from cl_methods import streams

HPARAMS = dict(fisher="exact", buffer_size=20, alpha=1.0, beta=0.5, strength=10.0, gamma=1.0,
               damping=0.1, temperature=2.0, eps=1e-7, gate_fraction=0.5, prune_fraction=0.5,
               retrain_fraction=0.5, exemplars_per_class=3, hidden=8, latent=2,
               importance_samples=2, decoder_std=0.2)




@pytest.fixture(scope="module")
def digits():
  return datasets.load_digits()


def _run(name, contexts, scenario, settings, hidden=(32,)):
  entry = registry.ENTRIES[name]
  layout = scenarios.output_layout(contexts, scenario, separate_heads=entry.separate_heads)
  model = benchmark_models.build("mlp", contexts.data.input_shape, layout.n_units,
                                 hidden=hidden, seed=0)
  method = registry.build(name, model, layout, HPARAMS,
                          steps_per_context=settings.steps_per_context)
  for key in ("unsupported", "needs_boundaries", "separate_heads", "interleaved"):
    assert getattr(method, key) == getattr(entry, key), (name, key)
  return runner.run(method, contexts, layout, model.params, optax.adam(3e-3), settings)


def test_finetune_forgets_and_joint_does_not(digits):
  contexts = streams.split_contexts(digits, 5, seed=0)
  settings = runner.RunSettings(steps_per_context=60, batch_size=32, eval_every=30,
                                curve_examples=64)
  fine = _run("finetune", contexts, "class", settings)
  joint = _run("joint", contexts, "class", settings)
  assert fine.accuracy_matrix.shape == (5, 5) and fine.curve_accuracy.shape == (11, 5)
  np.testing.assert_array_equal(fine.boundary_steps, [60, 120, 180, 240, 300])
  np.testing.assert_array_equal(fine.curve_steps, np.arange(11) * 30)
  m_fine, m_joint = fine.metrics(), joint.metrics()
  # Each context is learned, then lost as soon as the next one is trained (Class-IL).
  assert m_fine["learning_accuracy"] > 0.8 and m_fine["forgetting"] > 0.7
  assert m_fine["acc"] < 0.3 and m_fine["min_acc"] < 0.1
  assert m_joint["acc"] > 0.85 and m_joint["forgetting"] < 0.1
  assert 0.0 <= fine.random_init_accuracy.max() < 0.5


def test_every_other_method_runs_through_the_runner(digits):
  """The methods not run above, in Task-IL (which every method serves) on two permuted
  contexts, a few steps each: their hooks are traced, compiled and run by the runner. Those
  that need no boundaries run on a task-free stream; the others are refused there."""
  contexts = streams.permuted_contexts(digits, 2, seed=0)
  for name in registry.METHOD_NAMES:
    entry = registry.ENTRIES[name]
    assert entry.serves("task")
    if name in ("finetune", "joint"):
      continue
    stream = "task_based" if entry.needs_boundaries else "task_free"
    settings = runner.RunSettings(steps_per_context=2, batch_size=8, eval_every=2,
                                  curve_examples=32, consolidation_examples=16, stream=stream,
                                  boundary_width=1.0)
    if entry.needs_boundaries:
      with pytest.raises(ValueError, match="needs context boundaries"):
        runner.check_compatible(entry, "task_free")
    result = _run(name, contexts, "task", settings, hidden=(8,))
    assert np.isfinite(result.accuracy_matrix).all(), name
    assert ((0 <= result.curve_accuracy) & (result.curve_accuracy <= 1)).all(), name


@pytest.mark.parametrize("at_last", [True, False])
def test_end_context_after_the_last_context_only_where_the_method_asks(digits, at_last):
  """end_context runs at every boundary; at the last one only with end_context_at_last."""
  contexts = streams.split_contexts(digits, 5, seed=0)
  layout = scenarios.output_layout(contexts, "task")
  model = benchmark_models.build("mlp", contexts.data.input_shape, layout.n_units,
                                 hidden=(8,), seed=0)
  ended = []

  def end_context(params, state, data, context, key):
    jax.debug.callback(lambda c: ended.append(int(c)), context)
    return params, state

  counting = dataclasses.replace(baselines.finetune(model.apply_fn), end_context=end_context,
                                 end_context_at_last=at_last)
  settings = runner.RunSettings(steps_per_context=2, batch_size=8, eval_every=2,
                                curve_examples=16, consolidation_examples=8)
  runner.run(counting, contexts, layout, model.params, optax.sgd(0.0), settings)
  jax.effects_barrier()
  assert ended == ([0, 1, 2, 3, 4] if at_last else [0, 1, 2, 3])
