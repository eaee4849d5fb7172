"""Suite `loader`: the pretraining data loader against the train step it feeds.

Prepares the standard library in a temporary folder as `experiments.prepare_data` does by
default (SentencePiece, vocabulary 8000, records of 4096 ids), then times, in interleaved
rounds, `steps_per_run` train steps of transformer:small on one device (the `lm` suite's
step, at the tokenizer's vocabulary) and LOADER_BATCHES of its batches (batch x seq_len
windows, shuffled) from `text_data.lm_dataset` over the shards, in process and with 2
worker processes; LOADER_BATCHES is well above the batches prefetched while the step runs.
The ratio is loader tokens/s over the step's.
"""
import tempfile
from pathlib import Path

import jax
import numpy as np

from experiments.benchmarks import train_step
from experiments.benchmarks.timing import interleaved_medians, load_average
from runtime import text_data, token_shards, tokenizers

MODEL = "transformer:small"
VOCAB_SIZE = 8000
WORKERS = (0, 2)
LOADER_BATCHES = 200


def run(*, warmup: int = 1, runs: int = 3, steps_per_run: int = 5, model: str = MODEL,
        source: str = "stdlib", vocab_size: int = VOCAB_SIZE) -> dict:
  """The timings above (other `model`, `source` and `vocab_size`: smaller smoke tests)."""
  config = train_step.load_config(model)
  with tempfile.TemporaryDirectory() as folder:
    train, validation, description = text_data.split_documents(source, 5)
    tokenizer = tokenizers.SentencePieceTokenizer(
        tokenizers.train_sentencepiece(train, vocab_size))
    prepared = Path(folder) / "stdlib"
    token_shards.write(prepared, dict(train=train, validation=validation), tokenizer,
                       description=description)
    tokens = token_shards.load(prepared).split("train")
    config.data.source, config.model.vocab_size = str(prepared), tokenizer.vocab_size
    batch = np.asarray(tokens[0:config.batch_size * (config.seq_len + 1)], np.int32)
    run_, compiled, state, global_batch, _ = train_step.compiled_step(
        config, dict(data=1, fsdp=1, tensor=1), batch.reshape(config.batch_size, -1))
    carry = dict(state=state)

    def steps():
      for _ in range(steps_per_run):
        carry["state"], metrics = compiled(carry["state"], global_batch)
      return metrics

    calls, iterators = dict(step=steps), []
    for workers in WORKERS:
      iterator = iter(text_data.lm_dataset(tokens, seq_len=config.seq_len,
                                           batch_size=config.batch_size, seed=0, shuffle=True,
                                           repeat=True, workers=workers))
      next(iterator)   # worker start-up is not timed
      iterators.append(iterator)
      calls[f"loader, {workers} workers"] = (
          lambda it=iterator: [next(it) for _ in range(LOADER_BATCHES)][-1])
    with jax.set_mesh(run_.mesh):
      seconds = interleaved_medians(calls, warmup, runs)
    for iterator in iterators:
      iterator.close()
  per_batch = config.batch_size * config.seq_len
  rate = {name: per_batch * (steps_per_run if name == "step" else LOADER_BATCHES) / s
          for name, s in seconds.items()}
  rows = [dict(what=name, seconds=seconds[name], tokens_per_sec=rate[name],
               vs_step=rate[name] / rate["step"], load=load_average()) for name in seconds]
  return dict(model=model, batch_size=config.batch_size, seq_len=config.seq_len,
              vocab_size=vocab_size, train_tokens=len(tokens), warmup=warmup, runs=runs,
              steps_per_run=steps_per_run, rows=rows)


def table(result: dict) -> str:
  lines = [f"{result['model']} step (batch {result['batch_size']} x {result['seq_len']}, "
           f"vocabulary {result['vocab_size']}) against its loader; median of {result['runs']} "
           f"rounds of {result['steps_per_run']} steps and {LOADER_BATCHES} loader batches",
           f"{'':<22}{'seconds':>9}{'tokens/s':>12}{'vs step':>9}{'load':>6}"]
  for r in result["rows"]:
    lines.append(f"{r['what']:<22}{r['seconds']:>9.3f}{r['tokens_per_sec']:>12,.0f}"
                 f"{r['vs_step']:>8.1f}x{r['load']:>6.1f}")
  return "\n".join(lines)
