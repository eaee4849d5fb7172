"""Tokenizes a corpus once, for many runs and hosts: ArrayRecord shards of token ids.

  python -m experiments.prepare_data --out=DIR --vocab_size=8000     # the standard library
  python -m experiments.prepare_data --source=~/text --out=DIR --tokenizer=my.model
  python -m experiments.prepare_data --out=DIR --vocab_size=0        # bytes

Splits --source (as config.data.source reads it) into train and validation documents, trains
a SentencePiece model on the train split (or reads --tokenizer) and writes DIR atomically
(`runtime.token_shards`). Train with --config.data.source=DIR (the tokenizer sets vocab_size).
"""
from pathlib import Path

from absl import flags
from absl import logging

from experiments import cli
from runtime import text_data, token_shards, tokenizers

SOURCE = flags.DEFINE_string("source", "stdlib", "A built-in corpus, or a text file or folder.")
VALIDATION = flags.DEFINE_integer("validation_percent", 5, "Percent of files for validation.")
OUT = flags.DEFINE_string("out", None, "The directory to write (must not exist).")
VOCAB = flags.DEFINE_integer("vocab_size", 8000, "SentencePiece vocabulary to train (0: bytes).")
TOKENIZER = flags.DEFINE_string("tokenizer", None, "A SentencePiece .model to use instead.")
MODEL_TYPE = flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "SentencePiece model.")
RECORD = flags.DEFINE_integer("record_tokens", 4096, "Token ids per ArrayRecord record.")
SHARD = flags.DEFINE_integer("shard_records", 1024, "Records per shard file.")


def main(argv):
  cli.check_arguments(argv, required=(OUT,))
  out = Path(OUT.value).expanduser().absolute()
  if out.exists():
    raise cli.UsageError(f"--out {str(out)!r} exists; give a new directory")
  if not out.parent.is_dir():
    raise cli.UsageError(f"--out: the parent folder {str(out.parent)!r} does not exist")
  for flag in (RECORD, SHARD):
    if flag.value < 1:
      raise cli.UsageError(f"--{flag.name} must be >= 1, got {flag.value}")
  if VOCAB.value and VOCAB.value < tokenizers.MIN_SENTENCEPIECE_VOCAB and not TOKENIZER.value:
    raise cli.UsageError(f"--vocab_size must be 0 (bytes) or at least "
                         f"{tokenizers.MIN_SENTENCEPIECE_VOCAB}, got {VOCAB.value}")
  train, validation, description = text_data.split_documents(SOURCE.value, VALIDATION.value, "")
  if TOKENIZER.value:
    tokenizer = tokenizers.SentencePieceTokenizer.from_file(TOKENIZER.value)
  elif VOCAB.value:
    tokenizer = tokenizers.SentencePieceTokenizer(tokenizers.train_sentencepiece(
        train, VOCAB.value, model_type=MODEL_TYPE.value))
  else:
    tokenizer = tokenizers.ByteTokenizer()
  meta = token_shards.write(out, dict(train=train, validation=validation), tokenizer,
                            description=description, record_tokens=RECORD.value,
                            shard_records=SHARD.value)
  for split, info in meta["splits"].items():
    logging.info("%s: %d tokens (%.2f bytes/token) in %d shards", split, info["tokens"],
                 info["bytes"] / info["tokens"], len(info["shards"]))
  logging.info("wrote %s (%s, vocabulary %d)", out, tokenizer.name, tokenizer.vocab_size)


if __name__ == "__main__":
  cli.run(main)
