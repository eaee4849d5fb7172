"""Tokenizers and prepared shards: a SentencePiece model trained on a few standard-library
files in the test, ArrayRecord shards read as the in-memory tokens are, worker processes,
broken shards refused, and a tokenized tiny config that trains, resumes exactly and reports
bits per byte."""
import json
import math
import shutil

import chex
import jax
import numpy as np
import pytest

from runtime import evaluation, loop, text_data, token_shards, tokenizers, training
from runtime.errors import UsageError
from tests.helpers import tiny_config


def documents():
  root = text_data.stdlib_root()
  files = sorted(root.glob("json/*.py")) + sorted(root.glob("email/_*.py"))
  return [f.read_bytes() for f in files]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A SentencePiece (vocabulary 400) corpus in small records (64 ids) and shards (4 records)."""
  docs = documents()
  tokenizer = tokenizers.SentencePieceTokenizer(tokenizers.train_sentencepiece(docs[1:], 400))
  out = tmp_path_factory.mktemp("prepared") / "corpus"
  token_shards.write(out, dict(train=docs[1:], validation=docs[:1]), tokenizer,
                     description="test", record_tokens=64, shard_records=4)
  return out


def test_sentencepiece_round_trips_text_and_separates_documents(prepared):
  tokenizer = token_shards.load(prepared).tokenizer
  assert tokenizer.vocab_size == 400 and tokenizer.separator == 2   # the end-of-sequence piece
  for text in documents()[:3] + ["héllo \x00\tworld\n\n  x = 1".encode()]:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text and ids.max() < 400
    assert len(ids) < len(text)   # pieces longer than a byte


def test_shards_read_as_the_concatenated_documents(prepared):
  loaded = token_shards.load(prepared)
  tokenizer, docs = loaded.tokenizer, documents()
  expected = np.concatenate([np.append(tokenizer.encode(d), tokenizer.separator) for d in docs[1:]])
  train = loaded.split("train")
  assert len(train) == len(expected) and len(loaded.meta["splits"]["train"]["shards"]) > 3
  np.testing.assert_array_equal(train[0:len(train)], expected)
  for start, stop in ((0, 1), (60, 70), (63, 64 * 5 + 1), (len(train) - 5, len(train) + 9)):
    np.testing.assert_array_equal(train[start:stop], expected[start:stop])
  assert loaded.bytes_per_token("validation") == pytest.approx(
      (len(docs[0]) + 1) / len(loaded.split("validation")))
  kw = dict(seq_len=16, batch_size=4, seed=1, shuffle=True, repeat=True)
  from_shards, in_memory = iter(text_data.lm_dataset(train, **kw)), iter(
      text_data.lm_dataset(expected, **kw))
  for _ in range(5):
    np.testing.assert_array_equal(next(from_shards), next(in_memory))


def test_worker_processes_give_the_same_batches_and_resume(prepared):
  train = token_shards.load(prepared).split("train")
  kw = dict(seq_len=16, batch_size=4, seed=2, shuffle=True, repeat=True)
  reference = iter(text_data.lm_dataset(train, **kw))
  expected = [next(reference) for _ in range(8)]
  workers = iter(text_data.lm_dataset(train, workers=2, **kw))
  first = [next(workers) for _ in range(5)]
  state = workers.get_state()
  workers.close()
  resumed = iter(text_data.lm_dataset(train, workers=2, **kw))
  resumed.set_state(state)
  rest = [next(resumed) for _ in range(3)]
  resumed.close()
  np.testing.assert_array_equal(np.stack(first + rest), np.stack(expected))


@pytest.mark.parametrize("damage,message", [
    ("delete", "is missing"), ("flip", "is corrupt"), ("truncate", "is corrupt"),
    ("metadata", "is not a prepared corpus's metadata"), ("tokenizer", "does not exist")])
def test_a_broken_corpus_is_refused_before_reading(prepared, tmp_path, damage, message):
  broken = tmp_path / "broken"
  shutil.copytree(prepared, broken)
  shard = broken / "train-00001.array_record"
  if damage == "delete":
    shard.unlink()
  elif damage == "flip":
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
  elif damage == "truncate":
    shard.write_bytes(shard.read_bytes()[:-10])
  elif damage == "metadata":
    (broken / token_shards.META).write_text("{")
  else:
    (broken / token_shards.TOKENIZER_FILE).unlink()
  with pytest.raises(UsageError, match=message):
    text_data.load_corpus(str(broken), 5)


def test_tokenized_tiny_config_trains_resumes_exactly_and_reports_bits_per_byte(prepared, tmp_path):
  config = tiny_config(steps=6, checkpoint_every=3, log_every=3)
  config.data.source = str(prepared)
  whole = loop.pretrain(config, str(tmp_path / "whole"))
  assert jax.tree.leaves(whole["params"]["embed"])[0].shape[0] == 400   # the tokenizer's
  shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")    # as if killed after step 3
  resumed = loop.pretrain(config, str(tmp_path / "resumed"))
  chex.assert_trees_all_equal(jax.device_get(resumed["params"]), jax.device_get(whole["params"]))
  result = evaluation.evaluate(str(tmp_path / "whole"))
  per_byte = token_shards.load(prepared).bytes_per_token("validation")
  assert result["tokenizer"] == "sentencepiece:tokenizer.model"
  assert result["bytes_per_token"] == per_byte
  assert result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2) / per_byte)
  saved = json.loads((tmp_path / "whole" / "eval" / "step_6.json").read_text())
  assert saved["bits_per_byte"] == result["bits_per_byte"]
  config.model.vocab_size = 1000
  with pytest.raises(UsageError, match=r"vocab_size \(1000\) does not match the sentencepiece"):
    training.prepare(config)
