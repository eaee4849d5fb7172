"""Tokenizers: bytes (the default, vocabulary 256) or a SentencePiece model.

Both map bytes to int32 ids and back, and name the id that separates documents:
`ByteTokenizer` is the identity on bytes (byte 0 separates documents); a
`SentencePieceTokenizer` wraps a `.model` file (its end-of-sequence id separates documents).
`train_sentencepiece` trains a model offline on documents, with byte fallback (every byte
string encodes, nothing maps to unknown) and identity normalization without an added
leading space, so decode(encode(text)) == text for UTF-8 text.
"""
import dataclasses
import io
from pathlib import Path
from typing import Iterable

import numpy as np

from runtime.errors import UsageError

BYTES = "bytes"
MIN_SENTENCEPIECE_VOCAB = 260   # the 256 byte pieces, unknown, begin, end and one more piece


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  name: str = BYTES
  vocab_size: int = 256
  separator: int = 0

  def encode(self, data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8).astype(np.int32)

  def decode(self, ids) -> bytes:
    return np.asarray(ids).astype(np.uint8).tobytes()


class SentencePieceTokenizer:
  """A SentencePiece model from its serialized bytes (`model_bytes`); ValueError if they are
  not a model with an end-of-sequence piece."""

  def __init__(self, model_bytes: bytes, name: str = "sentencepiece"):
    import sentencepiece
    self.model_bytes = model_bytes
    self._model = sentencepiece.SentencePieceProcessor()
    try:
      self._model.LoadFromSerializedProto(model_bytes)
    except (RuntimeError, OSError) as e:
      raise ValueError(f"not a SentencePiece model ({e})") from None
    if self._model.eos_id() < 0:
      raise ValueError("the model has no end-of-sequence piece to separate documents")
    self.name = name
    self.vocab_size = self._model.GetPieceSize()
    self.separator = self._model.eos_id()

  @classmethod
  def from_file(cls, path, field: str = "--tokenizer") -> "SentencePieceTokenizer":
    """The model in file `path`; UsageError naming `field` and the file if it is not one."""
    path = Path(path).expanduser()
    if not path.is_file():
      raise UsageError(f"{field}: the SentencePiece model {str(path)!r} does not exist")
    try:
      return cls(path.read_bytes(), f"sentencepiece:{path.name}")
    except ValueError as e:
      raise UsageError(f"{field}: {str(path)!r}: {e}") from None

  def encode(self, data: bytes) -> np.ndarray:
    return np.asarray(self._model.EncodeAsIds(data.decode("utf-8", errors="replace")), np.int32)

  def decode(self, ids) -> bytes:
    return self._model.DecodeIds(np.asarray(ids).tolist()).encode("utf-8")


def train_sentencepiece(documents: Iterable[bytes], vocab_size: int, *, model_type: str = "bpe",
                        max_lines: int = 1_000_000) -> bytes:
  """Trains a SentencePiece model on the non-blank lines of `documents` (at most `max_lines`
  of them, sampled deterministically) and returns its serialized bytes. UsageError if
  vocab_size does not fit the text."""
  import sentencepiece
  if vocab_size < MIN_SENTENCEPIECE_VOCAB:
    raise UsageError(f"--vocab_size must be at least {MIN_SENTENCEPIECE_VOCAB} (256 byte pieces "
                     f"and the special ones), got {vocab_size}")

  def lines():
    for doc in documents:
      for line in doc.decode("utf-8", errors="replace").split("\n"):
        if line.strip():
          yield line

  model = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.Train(
        sentence_iterator=lines(), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=0.9995,
        max_sentence_length=1 << 14, input_sentence_size=max_lines,
        shuffle_input_sentence=True, num_threads=1, minloglevel=2)
  except RuntimeError as e:
    raise UsageError(f"--vocab_size {vocab_size}: SentencePiece could not train ({e})") from None
  return model.getvalue()
