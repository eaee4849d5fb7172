"""experiments.compare: the recall generator, the domain split, the checks before any
compile, and one small end-to-end run."""
import json

import numpy as np
import pytest

from experiments.compare import study
from runtime import text_data
from runtime import recall
from runtime.errors import UsageError
from experiments.configs import compare


def test_recall_answers_are_the_values_bound_to_the_queried_keys():
  for index in range(20):
    tokens, mask = recall.sequence(3, index, 96, 8)
    assert tokens.shape == (97,) and mask.shape == (96,) and mask.sum() == 8
    bound = dict(zip(tokens[0:16:2].tolist(), tokens[1:16:2].tolist()))
    assert len(bound) == 8 and all(k in recall.KEYS for k in bound)
    assert all(v in recall.VALUES for v in bound.values())
    assert all(t in recall.FILLER for t in tokens[16:97 - 16])
    queried, answers = tokens[:-1][mask], tokens[1:][mask]
    assert sorted(queried.tolist()) == sorted(bound)
    assert [bound[k] for k in queried.tolist()] == answers.tolist()
  again, _ = recall.sequence(3, 5, 96, 8)
  np.testing.assert_array_equal(again, recall.sequence(3, 5, 96, 8)[0])
  with pytest.raises(UsageError, match="num_pairs"):
    recall.check(256, 65)
  with pytest.raises(UsageError, match="cannot hold"):
    recall.check(16, 8)


def test_accuracy_scores_only_the_queried_values():
  tokens, mask = recall.sequence(0, 0, 32, 4)
  logits = np.zeros((1, 32, 256))
  logits[0, np.arange(32), tokens[1:]] = 1.0  # perfect everywhere
  assert recall.accuracy(logits, tokens[None], mask) == 1.0
  logits[0, np.flatnonzero(mask)[0]] = 0.0
  logits[0, np.flatnonzero(mask)[0], 0] = 1.0
  assert recall.accuracy(logits, tokens[None], mask) == 0.75


def test_stdlib_domains_are_disjoint_and_split_by_file():
  a = text_data.load_stdlib_domain(("json", "email"), 10)
  b = text_data.load_stdlib_domain(("asyncio",), 10)
  docs = lambda tokens: set(bytes(tokens).split(b"\0")) - {b""}
  assert not docs(a.train) & docs(b.train) and not docs(a.train) & docs(b.validation)
  assert not docs(a.train) & docs(a.validation)
  assert len(docs(a.train)) + len(docs(a.validation)) > 20
  with pytest.raises(UsageError, match="no_such_package"):
    text_data.load_stdlib_domain(("no_such_package",), 10)


def _micro(**overrides):
  c = compare.get_config()
  c.arms = "transformer,transformer_swa"
  c.studies = "lm,continual"
  c.train.update(batch_size=2, seq_len=32, warmup_steps=1, log_every=2, checkpoint_every=3)
  c.lm.update(steps=4, eval_batches=1)
  c.continual.update(steps_a=2, steps_b=2, eval_batches=1)
  c.ttl.context = 96
  for key, value in overrides.items():
    node, *path = key.split(".")
    target = c[node] if path else c
    target[path[0] if path else node] = value
  return c


@pytest.mark.parametrize("overrides, message", [
    ({"arms": "transformer,gpt5"}, "config.arms: unknown name"),
    ({"studies": "lm,vibes"}, "config.studies: unknown name"),
    ({"lm.steps": 0}, "config.lm.steps must be a positive integer"),
    ({"studies": "lm,ttl", "ttl.context": 100}, "config.ttl.context"),
    ({"continual.domain_b": "json,email"}, "share packages"),
    ({"continual.domain_a": "json,nonesuch"}, "config.continual.domain_a: unknown name"),
    ({"arms": "transformer,titans_mac", "studies": "lm"}, "parameter counts differ"),
])
def test_bad_input_is_refused_before_any_compile(overrides, message):
  config = _micro(**overrides)
  if "titans_mac" in overrides.get("arms", ""):
    config.arm_models.titans_mac.model.mlp_dim = 512  # not matched: ~+25%
  with pytest.raises(UsageError, match=message):
    study.validate(config)


def test_end_to_end_writes_results_and_a_rerun_skips_finished_arms(tmp_path, capsys):
  config = _micro()
  results = study.run(config, str(tmp_path), "test")
  printed = capsys.readouterr().out
  assert "| transformer | transformer |" in printed and "lm tokens" in printed
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["token_budget"]["lm"] == 4 * 2 * 32
  for arm in ("transformer", "transformer_swa"):
    r = saved["arms"][arm]
    assert r["params"] > 0 and r["lm"]["perplexity"] > 1
    assert set(r["continual"]) >= {"a_after_a", "a_after_b", "b_after_b", "forgetting_ppl",
                                   "interleaved_a", "interleaved_b"}
  assert (tmp_path / "results.md").exists() and (tmp_path / "continual.png").exists()
  first = (tmp_path / "arms" / "transformer" / "lm.json").stat().st_mtime_ns
  again = study.run(config, str(tmp_path), "test")
  assert (tmp_path / "arms" / "transformer" / "lm.json").stat().st_mtime_ns == first
  assert again["arms"]["transformer"]["lm"] == results["arms"]["transformer"]["lm"]
