"""Every architecture's config trains on 8 fake devices (data x tensor) and its loss falls."""
import importlib
import itertools
import json

import jax
import numpy as np
import pytest

from runtime import text_data
from runtime import evaluation
from runtime import loop
from runtime import training

CONFIGS = ["transformer", "titans_lmm", "titans_mac", "titans_mag", "titans_mal", "memory_lm",
           "hope", "hope_attention"]


def shrunk(name):
  """The config's tiny size, shrunk so that a few steps take seconds on CPU."""
  config = importlib.import_module(f"experiments.configs.{name}").get_config("tiny")
  config.update(dict(steps=16, batch_size=8, seq_len=32, log_every=8, checkpoint_every=16,
                     warmup_steps=2, learning_rate=1e-2))
  config.mesh.update(dict(data=4, tensor=2))
  model = dict(dim=32, num_layers=1, num_heads=2, mlp_dim=64)
  model.update({k: v for k, v in dict(window=8, segment_len=16, chunk_size=8, num_slots=64,
                                      memory_layers=(0,), key_dim=8, top_k=4,
                                      chunk_size_memory=8, chunk_size_other=8,
                                      cms_chunk_sizes=(4, 16, None)).items()
                if k in config.model})
  config.model.update(model)
  return config


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_sharded_and_loss_falls(name, tmp_path):
  config = shrunk(name)
  loop.pretrain(config, str(tmp_path))
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.3, rows
  assert (tmp_path / "checkpoints" / "16" / "params").is_dir()


def test_memory_lm_resumes_and_evaluates(tmp_path):
  config = shrunk("memory_lm")
  config.steps = 8
  loop.pretrain(config, str(tmp_path))
  config.steps = 12  # the same command with more steps resumes from step 8
  loop.pretrain(config, str(tmp_path))
  steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == [8, 12]
  result = evaluation.evaluate(str(tmp_path), mesh_sizes=dict(data=2, fsdp=2, tensor=2))
  assert result["step"] == 12 and 0 < result["loss"] < 6


def test_evaluation_streams_documents_with_the_memory_state_carried(tmp_path):
  """Titans LMM: a document scored in two pieces (state carried) equals one call over it."""
  import jax
  import numpy as np
  from flax import nnx

  config = shrunk("titans_lmm")
  config.mesh.update(dict(data=-1, tensor=1))
  run = training.prepare(config)
  params = nnx.to_pure_dict(nnx.state(training.models.build(config.model.to_dict(), 0)))
  tokens = jax.random.randint(jax.random.key(0), (2, 65), 0, 256)
  one = evaluation.piece_losses(run, params, tokens, 1)
  two = evaluation.piece_losses(run, params, tokens, 2)
  np.testing.assert_allclose(two.sum(), one.sum(), rtol=1e-5)
  assert two.shape == (2,)


def test_titans_forward_is_finite_on_real_text_at_the_tiny_size():
  """At its real tiny shape and sequence length (128), on the default corpus, the Titans
  memory's inner updates do not blow up at initialisation (they did with max_lr = 0.1)."""
  config = importlib.import_module("experiments.configs.titans_lmm").get_config("tiny")
  config.update(dict(batch_size=8))
  run = training.prepare(config)
  params = training.init_state(run, training.optimizer(config, run))["params"]
  corpus = text_data.load_corpus("stdlib", config.data.validation_percent)
  batches = text_data.lm_dataset(corpus.validation, seq_len=config.seq_len, batch_size=8, seed=0,
                            shuffle=False, repeat=False)
  loss = jax.jit(lambda p, tokens: training.loss_fn(run, p, tokens))
  for tokens in itertools.islice(batches, 2):
    assert np.isfinite(float(loss(params, tokens)))
