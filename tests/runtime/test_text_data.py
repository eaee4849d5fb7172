"""Byte-level corpora: the stdlib default, local paths, the by-file split, the windows."""
import threading

import numpy as np
import pytest

from runtime import text_data
from runtime.errors import UsageError


def test_stdlib_split_is_by_file_deterministic_and_disjoint():
  corpus = text_data.load_corpus("stdlib", 5)
  assert "train" in corpus.description and len(corpus.train) > 5_000_000
  assert 0 < len(corpus.validation) < len(corpus.train) / 5
  files = text_data._stdlib_files(text_data.stdlib_root())
  assert not any("test" in f.relative_to(text_data.stdlib_root()).parts[:-1] for f in files)


def test_builtin_machine_corpora_read_their_own_files():
  """The German manual pages arrive decompressed (roff in UTF-8), the C headers as C."""
  man = text_data.load_corpus("man_de", 5)
  assert "built-in man_de" in man.description and len(man.validation) > 0
  text = bytes(man.train).decode("utf-8", errors="replace")
  assert ".TH " in text and "ü" in text
  headers = text_data.load_corpus("c_headers", 5)
  assert b"#include" in bytes(headers.train[:1_000_000]) and len(headers.validation) > 0


def test_folder_source_skips_binary_files_and_splits_by_file(tmp_path):
  for i in range(40):
    (tmp_path / f"doc{i}.txt").write_text(f"document {i} " * 50)
  (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 10)
  corpus = text_data.load_corpus(str(tmp_path), 10)
  both = bytes(corpus.train) + bytes(corpus.validation)
  assert b"document 39" in both and bytes(range(1, 40)) not in both
  assert len(corpus.validation) > 0
  # Each file lands whole in one split.
  for i in range(40):
    assert (f"document {i} ".encode() * 50 in bytes(corpus.train)) != (
        f"document {i} ".encode() * 50 in bytes(corpus.validation))


def test_single_file_is_split_by_position(tmp_path):
  f = tmp_path / "one.txt"
  f.write_text("abcdefghij" * 100)
  corpus = text_data.load_corpus(str(f), 10)
  assert len(corpus.train) == 900 + 1 and len(corpus.validation) == 100 + 1


def test_windows_are_inputs_and_shifted_targets():
  tokens = np.arange(100, dtype=np.uint8)
  batches = text_data.lm_dataset(tokens, seq_len=8, batch_size=4, seed=0, shuffle=False, repeat=False)
  first = next(iter(batches))
  assert first.shape == (4, 9)
  np.testing.assert_array_equal(first[1], np.arange(8, 17))


def test_iterator_state_resumes_exactly():
  tokens = np.arange(200, dtype=np.uint8)
  ds = text_data.lm_dataset(tokens, seq_len=4, batch_size=2, seed=3, shuffle=True, repeat=True)
  it = iter(ds)
  for _ in range(30):  # past one epoch
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  resumed = iter(ds)
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack([next(resumed) for _ in range(5)]), np.stack(expected))


def test_too_little_data_is_refused():
  with pytest.raises(UsageError, match="fewer than one batch"):
    text_data.lm_dataset(np.zeros(20, np.uint8), seq_len=8, batch_size=4, seed=0, shuffle=False,
                    repeat=False)


def test_stdlib_domains_are_disjoint_and_split_by_file():
  a = text_data.load_stdlib_domain(("json", "email"), 10)
  b = text_data.load_stdlib_domain(("asyncio",), 10)
  docs = lambda tokens: set(bytes(tokens).split(b"\0")) - {b""}
  assert not docs(a.train) & docs(b.train) and not docs(a.train) & docs(b.validation)
  assert not docs(a.train) & docs(a.validation)
  assert len(docs(a.train)) + len(docs(a.validation)) > 20
  with pytest.raises(UsageError, match="no_such_package"):
    text_data.load_stdlib_domain(("no_such_package",), 10)


def test_mixture_follows_its_weights_and_resumes_exactly():
  domains = [np.full(400, 1, np.uint8), np.full(400, 2, np.uint8), np.full(400, 3, np.uint8)]
  # Batches 0-9 from domain 0 only, then a 30/70 mix of domains 1 and 2.
  weights = lambda n: np.array([1.0, 0.0, 0.0]) if n < 10 else np.array([0.0, 0.3, 0.7])
  ds = text_data.mixture_dataset(domains, seq_len=4, batch_size=8, seed=5, domain_weights=weights)
  it = iter(ds)
  batches = np.stack([next(it) for _ in range(210)])          # [batch, row, seq_len + 1]
  assert batches.shape == (210, 8, 5) and np.all(batches == batches[..., :1])
  assert np.all(batches[:10] == 1)
  later = batches[10:, :, 0]
  assert set(np.unique(later)) == {2, 3}
  assert np.mean(later == 3) == pytest.approx(0.7, abs=0.03)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = iter(ds)
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack([next(resumed) for _ in range(3)]), np.stack(expected))


def test_generated_datasets_read_in_one_thread_each():
  # grain's default ReadOptions start 16 reader threads per iterator; on a training
  # process with one CPU core they take that core from the train step.
  from runtime import facts, recall, repeat
  tokens = np.arange(2000, dtype=np.uint8)
  datasets = [
      text_data.lm_dataset(tokens, seq_len=8, batch_size=2, seed=0, shuffle=True, repeat=True),
      text_data.mixture_dataset([tokens], seq_len=8, batch_size=2, seed=0,
                                domain_weights=lambda n: np.ones(1)),
      recall.mixture(seed=0, settings=[(16, 2), (32, 4)], batch_size=2),
      repeat.dataset(tokens, seed=0, passage=8, distance=40, batch_size=2),
      facts.mixture_dataset(facts.make_world(0, 4, 2), tokens, seq_len=16, batch_size=2,
                            text_fraction=0.5, seed=0),
  ]
  before = threading.active_count()
  iterators = [iter(ds) for ds in datasets]
  for it in iterators:
    next(it)
  assert threading.active_count() - before <= len(datasets)
