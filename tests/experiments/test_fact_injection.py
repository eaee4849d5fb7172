"""The facts world is deterministic and split cleanly; the study runs end to end at tiny size
(every method, the stream's matrices, a rerun reusing a finished seed); an epoch's steps of
several facts; the one-batch config; the frontier interpolation; the study's bad input fails
early with one-line errors (t above the table, a table that does not fit, stream batches or
facts per step that do not divide, no background statistics, no memory layer)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import fact_injection as fact_injection_config
from experiments.configs import fact_injection_one_batch as fact_injection_one_batch_config
from experiments.fact_injection import study as fact_injection
from runtime import config_schema, facts, models, slot_statistics, training
from runtime.errors import UsageError
from tests.helpers import run_cli

TINY = dict(batch_size=8, seq_len=64)
TINY_MODEL = dict(dim=32, num_layers=2, num_heads=2, mlp_dim=64, memory_layers=(1,),
                  num_slots=256, memory_heads=2, key_dim=8, top_k=4)


def _config(**model):
  config = fact_injection_config.get_config()
  config.update(TINY)
  config.model.update({**TINY_MODEL, **model})
  config.facts.update(dict(num_known=20, num_new=4))
  config.smf.update(dict(t=(10, 50), ablation_t=50, adamw_t=(50,)))
  config.known_eval_people = 4
  config.stream_batches = 2
  return config


def test_world_is_deterministic_from_seed_and_splits_are_disjoint():
  a, b, c = (facts.make_world(s, 50, 10) for s in (3, 3, 4))
  assert a == b and a != c
  more = facts.make_world(3, 50, 20)     # more new people: the same known world
  assert more.known == a.known and all(more.values[p] == a.values[p] for p in a.known)
  assert len(set(a.known)) == 50 and len(set(a.new)) == 10
  assert not set(a.known) & set(a.new)
  fact = a.facts(a.new)[0]
  assert len(a.facts(a.new)) == 10 * len(facts.ATTRIBUTES)
  # Held-out question templates never appear among the training ones or the statements.
  train_q, held_q = facts.question_prompts(fact, False), facts.question_prompts(fact, True)
  assert not set(train_q) & set(held_q)
  text = "\n".join(facts.pretraining_lines(a))
  assert not any(q in text for q in held_q)
  assert not any(p in text for p in a.new)  # new people are absent from pretraining text
  assert all(fact.value in s for s in facts.statements(fact))
  tokens, mask = facts.padded_batch(facts.statements(fact), 64)
  assert tokens.shape == mask.shape == (len(facts.statements(fact)), 65)
  assert (tokens[mask == 0] == 0).all()


def test_the_study_end_to_end_at_tiny_size(tmp_path):
  config = _config()
  config.update(dict(steps=8, checkpoint_every=8, log_every=4, warmup_steps=2,
                     background_batches=3, stream_batches=2, epochs=1, heldout_text_batches=1,
                     known_eval_people=2, seeds=(3,)))
  config.smf.update(dict(learning_rates=(100.0,), t=(10,), ablation_t=10, adamw_t=(10,),
                         adamw_learning_rates=(1e-2,)))
  config.full.learning_rates = (1e-3,)
  config.lora.update(dict(ranks=(2,), learning_rates=(1e-2,)))
  results = fact_injection.study(config, str(tmp_path))
  rows = {r["method"]: r for r in results["rows"]}
  assert sorted(rows) == sorted(fact_injection.METHODS)
  for row in rows.values():
    assert len(row["matrix"]) == 2 and len(row["matrix"][0]) == 2
    assert 0 <= row["learned"]["mean"] <= 1 and row["learned"]["n"] == 1
  # Only the SMF rows rewrite part of the table; full finetuning rewrites all of it.
  assert 0 < rows["smf"]["rewritten"]["mean"] < 1 and rows["full"]["rewritten"]["mean"] == 1
  assert rows["lora"]["rewritten"]["mean"] == 0
  assert all(f"forgot_pct_{g}" in rows["full"] for g in fact_injection.INTERFERENCE_GROUPS)
  assert results["diagnostics"][0]["read_share_per_token"] == 2 * 4 / 256
  assert set(results["matched"]) == {"smf", "smf_adamw", "lora", "full"}
  assert (tmp_path / "frontier.png").exists() and (tmp_path / "matrices.png").exists()
  seed = json.loads((tmp_path / "seed_3" / "results.json").read_text())
  assert seed["baseline"]["known"] >= 0 and len(seed["rows"]) == len(fact_injection.METHODS)
  again = fact_injection.study(config, str(tmp_path))   # the finished seed is reused
  assert again["rows"] == results["rows"]


def test_qa_is_exact_match_of_the_greedy_answer():
  """Evaluator.correct (one teacher-forced pass over prompts of different lengths) marks a
  question correct exactly when token-by-token greedy decoding (argmax of the full forward)
  gives its answer; here every other question's answer is set to that greedy continuation."""
  config = _config()
  run = training.prepare(config, mesh_sizes={"data": -1})
  params = nnx.to_pure_dict(nnx.state(models.build(config.model.to_dict(), 0, run.rules)))
  world = facts.make_world(0, 20, 4)
  evaluator = fact_injection.Evaluator(run, config, world, np.zeros((1, 2, 9), np.int32))
  questions = [(facts.encode(prompt), facts.encode(f" {fact.value}\n"))
               for fact in world.facts(world.new[:2])
               for prompt in facts.question_prompts(fact, held_out=True)]
  forward = jax.jit(run.apply)   # causal: the padding after position j leaves logits[j] alone
  width = max(len(p) + len(a) for p, a in questions)   # one width: one compile
  prompts, answers, expected = [], [], []
  for i, (prompt, answer) in enumerate(questions):
    row = np.zeros((1, width), np.int32)
    row[0, :len(prompt)] = prompt
    for j in range(len(prompt), len(prompt) + len(answer)):
      row[0, j] = int(np.argmax(forward(params, jnp.asarray(row))[0, j - 1]))
    greedy = row[0, len(prompt):len(prompt) + len(answer)]
    prompts.append(prompt)
    answers.append(greedy if i % 2 == 0 else answer)
    expected.append(i % 2 == 0 or np.array_equal(greedy, answer))
  assert len({len(p) for p in prompts}) > 1
  qa = fact_injection.qa_batch(prompts, answers)
  np.testing.assert_array_equal(evaluator.correct(params, qa), expected)


def test_methods_select_the_rows_of_the_sweep():
  config = fact_injection_config.get_config()
  assert {m for m, _ in fact_injection.sweep(config)} == set(fact_injection.METHODS)
  config.methods = "full,smf"
  assert [(m, fact_injection.setting_name(s)) for m, s in fact_injection.sweep(config)] == [
      ("smf", "t=500 lr=100"), ("full", "lr=3e-05"),
      ("full", "lr=0.0001")]


def test_interference_groups_split_the_known_questions_by_name_and_by_value():
  world = facts.make_world(0, 20, 4)
  groups = fact_injection.interference_groups(
      world, fact_injection.qa_set(world, world.known, held_out=False))
  questions = [(f, q) for f in world.facts(world.known) for q in facts.question_prompts(f, False)]
  first = {p.split()[0] for p in world.new}
  for (fact, _), name, value in zip(questions, groups["shared_name"], groups["value_injected"]):
    assert name == (fact.person.split()[0] in first
                    or any(fact.person.split()[1] == p.split()[1] for p in world.new))
    assert value == any(world.values[p][fact.attribute] == fact.value for p in world.new)
  assert (groups["other_name"] == ~groups["shared_name"]).all()
  assert (groups["value_not_injected"] == ~groups["value_injected"]).all()
  assert 0 < groups["shared_name"].sum() < len(questions)


def test_an_epoch_steps_through_every_fact_once_in_groups_of_facts_per_step():
  facts_b = [(np.full((3, 5), i), np.ones((3, 5), np.int32)) for i in range(8)]
  steps = list(fact_injection.steps_of_epoch(facts_b, 4, np.random.default_rng(0)))
  assert len(steps) == 2 and all(t.shape == m.shape == (12, 5) for t, m in steps)
  firsts = [int(v) for tokens, _ in steps for v in tokens[::3, 0]]
  assert sorted(firsts) == list(range(8)) and firsts != list(range(8))
  one = list(fact_injection.steps_of_epoch(facts_b, 1, np.random.default_rng(0)))
  assert [int(t[0, 0]) for t, _ in one] == list(np.random.default_rng(0).permutation(8))


def test_the_one_batch_config_injects_once_with_the_four_main_methods():
  config = fact_injection_one_batch_config.get_config()
  config_schema.check(config, fact_injection.SCHEMA)
  assert config.stream_batches == 1
  rows = [(m, fact_injection.setting_name(s)) for m, s in fact_injection.sweep(config)]
  assert {m for m, _ in rows} == set(fact_injection.FRONTIER_METHODS) and len(rows) == 9
  assert ("smf_adamw", "t=2000 lr=0.01") in rows and ("lora", "rank=64 lr=0.001") in rows


def test_forgetting_at_matched_learning_interpolates_the_frontier():
  points = [(0.4, 10.0), (0.8, 30.0), (0.6, 40.0), (0.9, 70.0)]   # (0.6, 40) is dominated
  at = lambda level: fact_injection.forgetting_at(points, level, (0.1, 0.0))
  assert at(0.05) == 0.0 and at(0.4) == 10.0 and at(0.95) is None
  assert at(0.6) == pytest.approx(20.0)        # halfway from (0.4, 10) to (0.8, 30)
  assert at(0.85) == pytest.approx(50.0)
  assert at(0.25) == pytest.approx(5.0)        # from the start (0.1, 0) to (0.4, 10)


def test_a_table_that_does_not_fit_and_stream_batches_or_steps_that_do_not_divide(monkeypatch):
  config = _config()
  config.stream_batches = 3
  run = training.prepare(config, mesh_sizes={"data": -1})
  with pytest.raises(UsageError, match=r"config.stream_batches \(3\) must divide"):
    fact_injection.check_config(config, run)
  config.stream_batches = 2
  config.facts_per_step = 3   # a stream batch holds 2 people x 4 attributes = 8 facts
  with pytest.raises(UsageError, match=r"config.facts_per_step \(3\) must divide the 8 facts"):
    fact_injection.check_config(config, run)
  config.facts_per_step = 4
  fact_injection.check_config(config, run)
  monkeypatch.setattr(fact_injection, "TABLE_COPIES", 2 ** 40)
  with pytest.raises(UsageError, match=r"config.model.num_slots \(256\) does not fit"):
    fact_injection.check_config(config, run)


def test_t_larger_than_the_table_is_a_usage_error():
  config = _config()
  run = training.prepare(config, mesh_sizes={"data": -1})
  config.smf.t = (10, 257)
  with pytest.raises(UsageError, match=r"config.smf.t must be an integer in 1\.\.256"):
    fact_injection.check_config(config, run)
  config.smf.update(dict(t=(10,), adamw_t=(50, 300)))
  with pytest.raises(UsageError, match=r"config.smf.adamw_t must be an integer in 1\.\.256"):
    fact_injection.check_config(config, run)


def test_a_model_without_memory_layer_is_a_usage_error():
  config = _config()
  config.model = dict(name="transformer", vocab_size=256, dim=32, num_layers=2, num_heads=2,
                      mlp_dim=64)
  with pytest.raises(UsageError, match="has no memory layer"):
    fact_injection.check_config(config, training.prepare(config, mesh_sizes={"data": -1}))


def test_missing_background_statistics_name_the_command(tmp_path):
  with pytest.raises(UsageError, match="run `python -m experiments.background_stats "
                                       f"--workdir={tmp_path}`"):
    slot_statistics.load(tmp_path, 10, 256)


def test_cli_reports_bad_t_in_one_line_before_compiling(tmp_path):
  result = run_cli("experiments.fact_injection", "--config=experiments/configs/fact_injection.py",
                   "--config.smf.t=(100,70000)", f"--workdir={tmp_path}", devices=1)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.smf.t must be an integer in 1..65536 (the memory table's slots), got 70000")
  assert not (tmp_path / "checkpoints").exists()
