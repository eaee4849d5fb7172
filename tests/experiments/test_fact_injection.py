"""The facts world is deterministic and split cleanly; the study's bad input fails early with
one-line errors (t above the table, no background statistics, no memory layer)."""
import pytest

from runtime import slot_statistics
from experiments.fact_injection import study as fact_injection
from runtime import facts
from runtime import training
from runtime.errors import UsageError
from experiments.configs import fact_injection as fact_injection_config
from tests.helpers import run_cli

TINY = dict(batch_size=8, seq_len=64)
TINY_MODEL = dict(dim=32, num_layers=2, num_heads=2, mlp_dim=64, memory_layers=(1,),
                  num_slots=256, memory_heads=2, key_dim=8, top_k=4)


def _config(**model):
  config = fact_injection_config.get_config()
  config.update(TINY)
  config.model.update({**TINY_MODEL, **model})
  config.facts.update(dict(num_known=20, num_new=4))
  config.known_eval_people = 4
  return config


def test_world_is_deterministic_from_seed_and_splits_are_disjoint():
  a, b, c = (facts.make_world(s, 50, 10) for s in (3, 3, 4))
  assert a == b and a != c
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


def test_t_larger_than_the_table_is_a_usage_error():
  config = _config()
  config.smf.t = (10, 257)
  with pytest.raises(UsageError, match=r"config.smf.t must be an integer in 1\.\.256"):
    fact_injection.check_config(config, training.prepare(config, mesh_sizes={"data": -1}))


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
                   "--config.smf.t=(100,5000)", f"--workdir={tmp_path}", devices=1)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.smf.t must be an integer in 1..4096 (the memory table's slots), got 5000")
  assert not (tmp_path / "checkpoints").exists()
