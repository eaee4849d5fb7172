"""Pre-tokenized corpora: token ids in ArrayRecord shards, written once, read by many runs.

A prepared directory (written by `write`, i.e. `python -m experiments.prepare_data`) holds

  prepared.json    the tokenizer, vocab_size, the ids' dtype, record_tokens, and per split
                   (train, validation): its shards (file name, size, CRC-32, records), its
                   token count and the count of the text bytes those tokens encode;
  tokenizer.model  the SentencePiece model (absent for byte-level shards);
  {split}-{i:05d}.array_record
                   the split's documents, each followed by the tokenizer's separator id,
                   concatenated and cut into records of record_tokens ids (the split's last
                   record may be shorter), shards of shard_records records.

`ShardedTokens` reads a split as one random-access token sequence: `len()` and slicing, as
the in-memory uint8 arrays of `text_data` offer, so `text_data.lm_dataset` cuts the same
windows from either (documents packed back to back, separated by the separator id). A window
reads the one or two records it spans through grain's `ArrayRecordDataSource`.
`load` checks every shard's size and CRC-32 before a run begins (about a second per GB).
"""
import dataclasses
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from runtime import tokenizers
from runtime.errors import UsageError

META = "prepared.json"
TOKENIZER_FILE = "tokenizer.model"
SPLITS = ("train", "validation")
FORMAT = 1


def is_prepared(source) -> bool:
  return Path(os.path.expanduser(str(source)), META).is_file()


class ShardedTokens:
  """A split's token ids as one sequence: len(tokens), tokens[a:b] -> np.ndarray."""

  def __init__(self, paths: list[Path], record_tokens: int, num_tokens: int, dtype: str):
    self.paths = [str(p) for p in paths]
    self.record_tokens = record_tokens
    self.num_tokens = num_tokens
    self.dtype = np.dtype(dtype)
    self._source = None

  def __len__(self) -> int:
    return self.num_tokens

  def __getstate__(self):   # grain's workers receive the paths and open their own readers
    return {**self.__dict__, "_source": None}

  def __getitem__(self, index: slice) -> np.ndarray:
    start, stop, step = index.indices(self.num_tokens)
    if step != 1:
      raise IndexError("ShardedTokens reads contiguous slices only")
    if stop <= start:
      return np.zeros((0,), self.dtype)
    if self._source is None:
      import grain
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    first, last = start // self.record_tokens, (stop - 1) // self.record_tokens
    records = [self._source[r] for r in range(first, last + 1)]
    ids = np.concatenate([np.frombuffer(r, self.dtype) for r in records])
    offset = first * self.record_tokens
    return ids[start - offset:stop - offset]


@dataclasses.dataclass(frozen=True)
class Prepared:
  root: Path
  meta: dict
  tokenizer: object

  def split(self, name: str) -> ShardedTokens:
    info = self.meta["splits"][name]
    return ShardedTokens([self.root / s["file"] for s in info["shards"]],
                         self.meta["record_tokens"], info["tokens"], self.meta["dtype"])

  def bytes_per_token(self, name: str) -> float:
    info = self.meta["splits"][name]
    return info["bytes"] / max(1, info["tokens"])


def tokenizer_of(root: Path, meta: dict, field: str):
  if meta["tokenizer"] == tokenizers.BYTES:
    return tokenizers.ByteTokenizer()
  return tokenizers.SentencePieceTokenizer.from_file(root / TOKENIZER_FILE, field)


def _crc32(path: Path) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 24):
      crc = zlib.crc32(chunk, crc)
  return crc


def load(source, field: str = "config.data.source", verify: bool = True) -> Prepared:
  """The prepared directory `source`, its metadata and tokenizer checked (and with `verify`
  every shard's size and CRC-32): UsageError naming the first problem."""
  root = Path(os.path.expanduser(str(source)))
  try:
    meta = json.loads((root / META).read_text())
    if meta.get("format") != FORMAT:
      raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
    for name in SPLITS:
      info = meta["splits"][name]
      if info["tokens"] < 1 or not info["shards"]:
        raise ValueError(f"the {name} split is empty")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UsageError(f"{field}: {str(root / META)!r} is not a prepared corpus's metadata "
                     f"({e}); rerun experiments.prepare_data") from None
  tokenizer = tokenizer_of(root, meta, field)
  if tokenizer.vocab_size != meta["vocab_size"]:
    raise UsageError(f"{field}: {str(root / TOKENIZER_FILE)!r} has {tokenizer.vocab_size} pieces, "
                     f"but the shards were written with {meta['vocab_size']}")
  if verify:
    for name in SPLITS:
      for shard in meta["splits"][name]["shards"]:
        path = root / shard["file"]
        if not path.is_file():
          raise UsageError(f"{field}: shard {str(path)!r} is missing")
        if path.stat().st_size != shard["bytes"] or _crc32(path) != shard["crc32"]:
          raise UsageError(f"{field}: shard {str(path)!r} is corrupt (its size or CRC-32 "
                           "differs from prepared.json)")
  return Prepared(root, meta, tokenizer)


class _ShardWriter:
  """Cuts a stream of token ids into records and records into shards."""

  def __init__(self, folder: Path, split: str, dtype, record_tokens: int, shard_records: int):
    self.folder, self.split, self.dtype = folder, split, dtype
    self.record_tokens, self.shard_records = record_tokens, shard_records
    self.pending, self.pending_len = [], 0
    self.shards, self.writer, self.in_shard = [], None, 0
    self.tokens = 0

  def add(self, ids: np.ndarray) -> None:
    self.pending.append(ids.astype(self.dtype))
    self.pending_len += len(ids)
    self.tokens += len(ids)
    if self.pending_len >= self.record_tokens:
      flat = np.concatenate(self.pending)
      full = len(flat) // self.record_tokens * self.record_tokens
      for start in range(0, full, self.record_tokens):
        self._write(flat[start:start + self.record_tokens])
      self.pending, self.pending_len = [flat[full:]], len(flat) - full

  def _write(self, record: np.ndarray) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter
    if self.writer is None:
      name = f"{self.split}-{len(self.shards):05d}.array_record"
      self.shards.append(dict(file=name, records=0))
      self.writer = ArrayRecordWriter(str(self.folder / name), "group_size:1")
    self.writer.write(record.tobytes())
    self.shards[-1]["records"] += 1
    self.in_shard += 1
    if self.in_shard == self.shard_records:
      self._close_shard()

  def _close_shard(self) -> None:
    if self.writer is not None:
      self.writer.close()
      path = self.folder / self.shards[-1]["file"]
      self.shards[-1].update(bytes=path.stat().st_size, crc32=_crc32(path))
      self.writer, self.in_shard = None, 0

  def close(self) -> dict:
    if self.pending_len:
      self._write(np.concatenate(self.pending))
    self._close_shard()
    return dict(shards=self.shards, tokens=self.tokens)


def write(out: Path, splits: dict[str, Iterable[bytes]], tokenizer, *, description: str,
          record_tokens: int = 4096, shard_records: int = 1024) -> dict:
  """Tokenizes each split's documents and writes the prepared directory `out` atomically
  (into a temporary sibling, renamed at the end); returns its metadata. `out` must not exist."""
  out = Path(out)
  dtype = np.uint8 if tokenizer.vocab_size <= 256 else (
      np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
  try:
    spm = isinstance(tokenizer, tokenizers.SentencePieceTokenizer)
    meta = dict(format=FORMAT, tokenizer="sentencepiece" if spm else tokenizers.BYTES,
                vocab_size=tokenizer.vocab_size, separator=tokenizer.separator,
                dtype=np.dtype(dtype).name, record_tokens=record_tokens,
                description=description, splits={})
    if spm:
      (tmp / TOKENIZER_FILE).write_bytes(tokenizer.model_bytes)
    for split in SPLITS:
      writer = _ShardWriter(tmp, split, dtype, record_tokens, shard_records)
      num_bytes = 0
      for doc in splits[split]:
        writer.add(np.append(tokenizer.encode(doc), tokenizer.separator))
        num_bytes += len(doc) + 1
      meta["splits"][split] = dict(writer.close(), bytes=num_bytes)
    (tmp / META).write_text(json.dumps(meta, indent=1))
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return meta
