"""Sharding: a sharded train step equals a one-device step; checkpoints move across meshes."""
import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from runtime import context_state
from runtime import evaluation
from runtime import generation
from runtime import loop
from runtime import text_data
from runtime import training
from tests.helpers import tiny_config


def _loss_and_grads(config, mesh_sizes, tokens):
  run = training.prepare(config, mesh_sizes=mesh_sizes)
  with jax.set_mesh(run.mesh):
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(training.models.build(
        config.model.to_dict(), config.seed))), out_shardings=run.param_shardings)()
    fn = jax.jit(jax.value_and_grad(lambda p, t: training.loss_fn(run, p, t)),
                 in_shardings=(run.param_shardings, run.batch_sharding))
    loss, grads = fn(params, training.global_batch(run, tokens))
  return run, loss, grads


@pytest.mark.parametrize("mesh_sizes", [dict(data=4, tensor=2), dict(data=2, fsdp=2, tensor=2)])
def test_sharded_step_matches_one_device(mesh_sizes):
  config = tiny_config()
  corpus = text_data.load_corpus("stdlib", 5)
  tokens = next(iter(text_data.lm_dataset(corpus.train, seq_len=32, batch_size=8, seed=0,
                                     shuffle=True, repeat=True)))
  _, loss1, grads1 = _loss_and_grads(config, dict(data=1), tokens)
  run8, loss8, grads8 = _loss_and_grads(config, mesh_sizes, tokens)
  assert run8.mesh.devices.size == 8
  # The parameters really are split: the attention query kernel over `tensor` heads.
  query = grads8["blocks"][0]["mixer"]["query"]["kernel"]
  assert query.sharding.shard_shape(query.shape)[1] == query.shape[1] // 2
  chex.assert_trees_all_close(loss8, loss1, rtol=1e-5)
  chex.assert_trees_all_close(grads8, grads1, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A tiny run trained on a 4 x 2 (data x tensor) mesh."""
  workdir = tmp_path_factory.mktemp("run4x2")
  loop.pretrain(tiny_config(**{"mesh.data": 4, "mesh.tensor": 2}), str(workdir))
  return workdir


def test_checkpoint_restores_on_other_meshes(trained_workdir):
  losses = [evaluation.evaluate(str(trained_workdir), mesh_sizes=sizes)["loss"]
            for sizes in (dict(data=4, tensor=2), dict(data=1), dict(data=2, tensor=4))]
  np.testing.assert_allclose(losses[1:], losses[0], atol=1e-5, rtol=0)
  assert (trained_workdir / "eval" / "step_12.json").exists()


def test_params_restore_with_orbax_alone(trained_workdir):
  params = ocp.StandardCheckpointer().restore(trained_workdir / "checkpoints" / "12" / "params")
  kernel = params["blocks"]["0"]["mixer"]["query"]["kernel"]
  assert kernel.shape == (32, 4, 8)
  assert np.isfinite(np.asarray(kernel)).all()


def test_metrics_logged(trained_workdir):
  import json
  rows = [json.loads(l) for l in (trained_workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [4, 8, 12]
  assert rows[-1]["loss"] < rows[0]["loss"]
  perf = [json.loads(l) for l in (trained_workdir / "perf.jsonl").read_text().splitlines()]
  assert all(r["tokens_per_sec"] > 0 and 0 < r["mfu"] for r in perf)
  assert list((trained_workdir / "tensorboard").iterdir())


def test_generation_from_the_4x2_checkpoint(trained_workdir, tmp_path):
  """Greedy continuations are the same on the 4 x 2 mesh and on one device, each row of a
  batch continues as its prompt alone would, and each token is the argmax of the full
  forward over the text so far."""
  ckpt, step, config = evaluation.checkpoint_to_read(str(trained_workdir), None)
  prompts = [b"def f(x):", b"import"]
  greedy = generation.Sampling(temperature=0)
  texts = []
  for sizes in (dict(data=4, tensor=2), dict(data=1)):
    run = training.prepare(config, mesh_sizes=sizes)
    with jax.set_mesh(run.mesh):
      params = evaluation.restore_params(ckpt, step, run)
      texts.append(generation.generate(run, params, prompts, max_new_tokens=6,
                                       sampling=greedy).texts)
  assert texts[0] == texts[1]
  with jax.set_mesh(run.mesh):
    alone = generation.generate(run, params, prompts[1:], max_new_tokens=6, sampling=greedy)
    read = context_state.read(run, params, list(b"imp"), room=9)
    with_context = generation.generate(run, params, [b"ort"], max_new_tokens=6,
                                       sampling=greedy, context=read)
    with pytest.raises(ValueError, match="exceed the context's room"):
      generation.generate(run, params, [b"ort"], max_new_tokens=7, context=read)
  assert alone.texts == texts[1][1:]
  assert with_context.texts == alone.texts      # read before the prompt, states carried
  # A saved context, loaded onto the 4 x 2 mesh, continues two prompts as the read one did.
  context_state.save(tmp_path / "ctx", read, run, step)
  run = training.prepare(config, mesh_sizes=dict(data=4, tensor=2))
  with jax.set_mesh(run.mesh):
    params = evaluation.restore_params(ckpt, step, run)
    loaded = context_state.load(tmp_path / "ctx", run, "--context_state")
    two = generation.generate(run, params, [b"ort", b"ort"], max_new_tokens=6,
                              sampling=greedy, context=loaded)
  assert (loaded.tokens, loaded.room) == (3, 9)
  assert two.texts == alone.texts * 2
  model = nnx.merge(run.graphdef, params)
  tokens = list(prompts[1])
  for _ in range(6):
    tokens.append(int(np.argmax(model(np.array([tokens], np.int32))[0, -1])))
  assert bytes(tokens[len(prompts[1]):]) == texts[1][1]
