"""Language-modelling data: byte-level tokens from a text corpus, as grain pipelines.

The default corpus is the Python standard library's own source (found with `sysconfig`,
test folders excluded), which every machine with Python has. Two more built-in corpora come
from Debian's base packages: `c_headers`, the C headers under /usr/include, and `man_de`,
the German manual pages under /usr/share/man/de (roff source, gzip-decompressed). A local
text file or folder can be used instead. Tokens are bytes (vocabulary 256); documents are
separated by byte 0. A directory prepared by `experiments.prepare_data` (`token_shards`:
ArrayRecord shards of token ids, bytes or SentencePiece) is read from its shards instead,
with its own train/validation split.

The train/validation split is deterministic and by file: a file goes to validation when
crc32(its path relative to the corpus root) % 100 < validation_percent. A single file is
split by position instead (its last validation_percent of bytes).
"""
import dataclasses
import functools
import gzip
import os
import sysconfig
import zlib
from pathlib import Path
from typing import Any, Callable

import grain
import numpy as np
from absl import flags

from runtime import token_shards
from runtime import tokenizers
from runtime.errors import UsageError

# How the project's datasets, all sliced or generated from arrays in memory or memory-mapped
# token files, are read: one thread and a short buffer. grain's defaults (16 threads, 500
# elements) suit slow storage; on a CPU with a core per training process their threads compete
# with the train step for that core.
READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)

VOCAB_SIZE = 256
SEPARATOR = 0
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
# Built-in corpora other than the standard library: name -> (folder, file-name pattern).
MACHINE_CORPORA = {"c_headers": ("/usr/include", "*.h"),
                   "man_de": ("/usr/share/man/de", "*.gz")}
BUILTIN_CORPORA = ("stdlib",) + tuple(MACHINE_CORPORA)


@dataclasses.dataclass(frozen=True)
class Corpus:
  train: Any  # token ids: a uint8 np.ndarray of bytes, or token_shards.ShardedTokens
  validation: Any
  description: str
  tokenizer: Any = tokenizers.ByteTokenizer()
  bytes_per_token: float = 1.0  # in the validation split: bits/byte = loss/ln 2/bytes_per_token


def tokenizer_for(source: str, field: str = "config.data.source"):
  """The tokenizer of a data source: a prepared directory's, else bytes."""
  if token_shards.is_prepared(source):
    return token_shards.load(source, field, verify=False).tokenizer
  return tokenizers.ByteTokenizer()


def stdlib_root() -> Path:
  return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(root: Path) -> list[Path]:
  return sorted(p for p in root.rglob("*.py")
                if not _SKIPPED_DIRS.intersection(p.relative_to(root).parts[:-1]))


def _setting(field: str, key: str) -> str:
  """How an error names setting `key`: config.data.source (field "config.data"), or the
  flag --source (field "")."""
  return f"{field}.{key}" if field else f"--{key}"


def _machine_files(name: str, field: str) -> tuple[Path, list[Path]]:
  """The folder and files of the built-in corpus `name` (UsageError if it has none here)."""
  folder, pattern = MACHINE_CORPORA[name]
  root = Path(folder)
  files = sorted(p for p in root.rglob(pattern) if p.is_file()) if root.is_dir() else []
  if not files:
    raise UsageError(f"{_setting(field, 'source')}: the built-in corpus {name!r} reads {pattern} "
                     f"files under {folder}, and this machine has none there")
  return root, files


def _read(path: Path) -> bytes:
  """A file's bytes, gzip-decompressed when its name ends in .gz."""
  data = path.read_bytes()
  return gzip.decompress(data) if path.suffix == ".gz" else data


def _is_text(data: bytes) -> bool:
  if b"\0" in data[:8192]:
    return False
  try:
    data[:65536].decode("utf-8")
  except UnicodeDecodeError as e:
    return e.start > 65536 - 4  # a multi-byte character cut at the probe's end
  return True


def _join(documents: list[bytes]) -> np.ndarray:
  out = bytearray()
  for doc in documents:
    out += doc
    out.append(SEPARATOR)
  return np.frombuffer(bytes(out), dtype=np.uint8)


@functools.lru_cache(maxsize=4)
def load_corpus(source: str, validation_percent: int, field: str = "config.data") -> Corpus:
  """Reads the corpus named by `source` (one of BUILTIN_CORPORA, a path, or a prepared
  directory, whose own split replaces validation_percent) and splits it (cached)."""
  if token_shards.is_prepared(source):
    prepared = token_shards.load(source, _setting(field, "source"))
    return Corpus(prepared.split("train"), prepared.split("validation"),
                  f"prepared {str(prepared.root)!r} ({prepared.tokenizer.name}, vocabulary "
                  f"{prepared.tokenizer.vocab_size}): {prepared.meta['description']}",
                  prepared.tokenizer, prepared.bytes_per_token("validation"))
  train, validation, description = split_documents(source, validation_percent, field)
  return Corpus(_join(train), _join(validation), description)


def split_documents(source: str, validation_percent: int,
                    field: str = "config.data") -> tuple[list[bytes], list[bytes], str]:
  """The train and validation documents of `source` (one of BUILTIN_CORPORA, or a path) and
  a description: split by file, or by position when there are too few files."""
  if not isinstance(validation_percent, int) or not 0 < validation_percent < 100:
    raise UsageError(f"{_setting(field, 'validation_percent')} must be an integer in 1..99, "
                     f"got {validation_percent!r}")
  if source == "stdlib":
    root = stdlib_root()
    files = _stdlib_files(root)
  elif source in MACHINE_CORPORA:
    root, files = _machine_files(source, field)
  else:
    path = Path(os.path.expanduser(str(source)))
    if not path.exists():
      raise UsageError(f"{_setting(field, 'source')}: {str(path)!r} does not exist (give one of "
                       f"{list(BUILTIN_CORPORA)}, or a text file or folder)")
    if path.is_file():
      data = path.read_bytes()
      if not data.strip():
        raise UsageError(f"{_setting(field, 'source')}: file {str(path)!r} is empty")
      if not _is_text(data):
        raise UsageError(f"{_setting(field, 'source')}: file {str(path)!r} is not UTF-8 text")
      cut = len(data) * (100 - validation_percent) // 100
      return [data[:cut]], [data[cut:]], f"file {path}"
    root = path
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
  train, validation, skipped = [], [], 0
  for f in files:
    data = _read(f)
    if not data.strip() or not _is_text(data):
      skipped += not _is_text(data)
      continue
    key = zlib.crc32(f.relative_to(root).as_posix().encode()) % 100
    (validation if key < validation_percent else train).append(data)
  if source == "stdlib":
    where = "the standard library"
  elif source in MACHINE_CORPORA:
    where = f"built-in {source} ({root})"
  else:
    where = f"folder {str(root)!r}"
  if not train and not validation:
    raise UsageError(f"{_setting(field, 'source')}: {where} holds no non-empty text files "
                     f"({len(files)} files, {skipped} binary)")
  if not train or not validation:
    # Too few files to split by file: split the concatenation by position instead.
    text = bytes(_join(train + validation)[:-1])
    cut = len(text) * (100 - validation_percent) // 100
    return (text[:cut].split(bytes([SEPARATOR])), text[cut:].split(bytes([SEPARATOR])),
            f"{where} (split by position)")
  return train, validation, f"{where}: {len(train)} train / {len(validation)} validation files"


def num_windows(tokens: np.ndarray, seq_len: int) -> int:
  """How many non-overlapping windows of seq_len + 1 tokens (inputs and shifted targets)."""
  return max(0, (len(tokens) - 1) // seq_len)


def lm_dataset(tokens, *, seq_len: int, batch_size: int, seed: int,
               shuffle: bool, repeat: bool, process_index: int = 0,
               process_count: int = 1, workers: int = 0) -> grain.IterDataset:
  """Batches of `batch_size // process_count` windows [local_batch, seq_len + 1] (int32) of
  `tokens` (a np.ndarray or token_shards.ShardedTokens).

  Window i covers tokens[i * seq_len : i * seq_len + seq_len + 1]. With `shuffle`, each epoch
  is a fresh permutation from `seed`; each process reads every process_count-th window.
  With `workers` > 0 the batches are made by that many worker processes (grain's
  mp_prefetch; the batches and their order do not change). The iterator's position is grain
  state, so it checkpoints and resumes exactly.
  """
  windows = num_windows(tokens, seq_len)
  if windows < batch_size:
    raise UsageError(f"the data has {windows} windows of seq_len {seq_len}, fewer than one batch "
                     f"of batch_size {batch_size}; use more data or smaller sizes")
  ds = grain.MapDataset.range(windows)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat(None)
  ds = ds[process_index::process_count]
  ds = ds.map(lambda i: tokens[i * seq_len:(i + 1) * seq_len + 1].astype(np.int32))
  ds = ds.batch(batch_size // process_count, drop_remainder=True)
  batches = ds.to_iter_dataset(READ_OPTIONS)
  if workers:  # worker w makes batches w, w + workers, ...; they are read back in order
    if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags (their defaults)
      flags.FLAGS.mark_as_parsed()
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return batches


def mixture_dataset(domains: list[np.ndarray], *, seq_len: int, batch_size: int, seed: int,
                    domain_weights: Callable[[int], np.ndarray], process_index: int = 0,
                    process_count: int = 1) -> grain.IterDataset:
  """Endless batches [batch_size // process_count, seq_len + 1] whose rows mix domains: row r of
  batch n comes from domain k with probability domain_weights(n)[k], at a window drawn
  uniformly from that domain's windows (`lm_dataset`'s windows), from a generator seeded
  by (seed, n, global row). Fixed weights give joint (interleaved) training; weights that
  move along n give a task-free stream. The position is grain state (checkpointed)."""
  local = batch_size // process_count
  windows = [num_windows(t, seq_len) for t in domains]
  for k, w in enumerate(windows):
    if w < 1:
      raise UsageError(f"domain {k} holds fewer than seq_len + 1 = {seq_len + 1} tokens")

  def row(i):
    n, r = divmod(int(i), local)
    rng = np.random.default_rng([seed, n, process_index * local + r])
    k = rng.choice(len(domains), p=domain_weights(n))
    w = rng.integers(windows[k])
    return domains[k][w * seq_len:(w + 1) * seq_len + 1].astype(np.int32)

  ds = grain.MapDataset.range(np.iinfo(np.int64).max // 2).map(row)
  return ds.to_iter_dataset(READ_OPTIONS).batch(local, drop_remainder=True)


def stdlib_package(path: Path, root: Path) -> str:
  """The top-level standard-library package (or module) a file belongs to: 'email', 'json'."""
  parts = path.relative_to(root).parts
  return parts[0] if len(parts) > 1 else Path(parts[0]).stem


@functools.lru_cache(maxsize=8)
def load_stdlib_domain(packages: tuple[str, ...], validation_percent: int,
                       field: str = "config.data") -> Corpus:
  """The standard-library files of `packages` only (a domain), split by file like `load_corpus`."""
  if not isinstance(validation_percent, int) or not 0 < validation_percent < 100:
    raise UsageError(f"{field}.validation_percent must be an integer in 1..99, "
                     f"got {validation_percent!r}")
  root = stdlib_root()
  files = [f for f in _stdlib_files(root) if stdlib_package(f, root) in packages]
  found = {stdlib_package(f, root) for f in files}
  missing = sorted(set(packages) - found)
  if missing:
    raise UsageError(f"{field}: no standard-library package(s) {missing} under {str(root)!r}")
  train, validation = [], []
  for f in files:
    text = f.read_bytes()
    if not text.strip() or not _is_text(text):
      continue
    key = zlib.crc32(f.relative_to(root).as_posix().encode()) % 100
    (validation if key < validation_percent else train).append(text)
  if not train or not validation:
    raise UsageError(f"{field}: packages {list(packages)} hold too few files to split "
                     f"{validation_percent}% by file; add packages or raise validation_percent")
  desc = (f"standard-library packages {','.join(packages)}: {len(train)} train / "
          f"{len(validation)} validation files")
  return Corpus(_join(train), _join(validation), desc)
