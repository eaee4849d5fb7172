"""Sampling text from a language model by incremental decoding (`DecoderLM.decode`): the
library behind `python -m experiments.generate`.

A batch of prompts of different lengths is decoded in lockstep, every row at the same
positions: the common prefix (the shortest prompt's length) is read in one call, then one
token per call, where token i of row r is its prompt's token while i < len(prompt r) and is
sampled from the logits at i - 1 afterwards. Each row thus reads exactly its own document,
and attention caches, memory states and chunk clocks stay shared in shape.

Sampling (`sample`): temperature 0 is greedy; otherwise the logits are divided by the
temperature, cut to the `top_k` largest (0: no cut) and to the smallest set whose
probabilities sum to at least `top_p` (nucleus sampling, Holtzman et al. 2020; 1: no cut),
and a token is drawn from the softmax of what is left.

A `context_state.Context` (a document already read, its memories updated) is the start of
every row: its per-row parts are broadcast to the batch and the prompts continue from it.

Text passes through the run's tokenizer (bytes, or the SentencePiece model of a prepared
corpus): the context and the prompts are encoded separately, continuations decoded.
"""
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from runtime import context_state, evaluation, text_data, tokenizers, training
from runtime.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def check(self) -> None:
    """ValueError naming the setting out of range."""
    if not (self.temperature >= 0 and np.isfinite(self.temperature)):
      raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0: no cut), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1] (1: no cut), got {self.top_p}")


def sample(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """Tokens [batch] drawn from logits [batch, vocab] under `sampling` (module docstring)."""
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / sampling.temperature
  if sampling.top_k and sampling.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs     # mass of the larger logits
    kept = jnp.sum(before < sampling.top_p, axis=-1, keepdims=True)    # >= 1
    threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(key, logits).astype(jnp.int32)


def decode_batch(model, tokens: jax.Array, lengths: jax.Array, key: jax.Array, *,
                 prefill: int, sampling: Sampling, state=None) -> jax.Array:
  """tokens [batch, L] with row r's prompt in its first lengths[r] places (the rest is
  overwritten) -> the same rows with every place after the prompt sampled. `prefill` <=
  min(lengths) tokens are read in one call, the rest one at a time (module docstring).
  `state`: a decoding state of `batch` rows with room for L more tokens to start from
  (default: an empty document)."""
  batch, total = tokens.shape
  state = model.init_decode_state(batch, total) if state is None else state
  logits, state = model.decode(tokens[:, :prefill], state)

  def next_token(i, carry):
    tokens, last, state = carry
    drawn = sample(last, jax.random.fold_in(key, i), sampling)
    token = jnp.where(i < lengths, tokens[:, i], drawn)
    logits, state = model.decode(token[:, None], state)
    return tokens.at[:, i].set(token), logits[:, 0], state

  tokens, _, _ = jax.lax.fori_loop(prefill, total, next_token, (tokens, logits[:, -1], state))
  return tokens


def check_request(prompts: list[bytes], max_new_tokens: int, sampling: Sampling) -> None:
  """ValueError naming what is wrong (its first word a flag of experiments.generate): no
  prompt or an empty one, max_new_tokens <= 0, a sampling setting out of range."""
  if not prompts:
    raise ValueError("prompt: give at least one prompt (or a --prompts_file)")
  if empty := [i for i, p in enumerate(prompts, 1) if not p]:
    raise ValueError(f"prompt {empty[0]} is empty")
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
  sampling.check()


@dataclasses.dataclass
class Generated:
  texts: list[bytes]     # each prompt's continuation (max_new_tokens tokens, decoded)
  tokens: int            # tokens generated, all prompts together
  seconds: float         # decoding time, compile excluded
  compile_seconds: float

  @property
  def tokens_per_second(self) -> float:
    return self.tokens / max(self.seconds, 1e-9)


def generate(run: training.Run, params, prompts: list[bytes], *, max_new_tokens: int,
             sampling: Sampling = Sampling(), seed: int = 0,
             context: context_state.Context | None = None,
             tokenizer=tokenizers.ByteTokenizer()) -> Generated:
  """Continues every prompt (bytes, non-empty) by max_new_tokens sampled tokens; call under
  jax.set_mesh(run.mesh). Compiles once per (batch, prompt lengths, max_new_tokens).

  `context`: a document already read (`context_state.read` or `load`), the start of every
  row (the memories learned from it at test time; attention attends to it). Its room must
  hold the longest prompt and max_new_tokens (ValueError)."""
  check_request(prompts, max_new_tokens, sampling)
  prompts = [tokenizer.encode(p) for p in prompts]
  lengths = np.array([len(p) for p in prompts], np.int32)
  total = int(lengths.max()) + max_new_tokens
  if context is not None and total > context.room:
    raise ValueError(f"max_new_tokens: the longest prompt ({lengths.max()} tokens) and "
                     f"{max_new_tokens} new tokens exceed the context's room ({context.room})")
  tokens = np.zeros((len(prompts), total), np.int32)
  for row, prompt in zip(tokens, prompts):
    row[:len(prompt)] = prompt

  def run_batch(params, tokens, lengths, key, state):
    model = nnx.merge(run.graphdef, params)
    state = None if state is None else context_state.batched(model, state, len(prompts))
    return decode_batch(model, tokens, lengths, key, prefill=int(prefill), sampling=sampling,
                        state=state)

  prefill = lengths.min()
  args = (params, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(seed),
          None if context is None else context.state)
  began = time.perf_counter()
  compiled = jax.jit(run_batch).lower(*args).compile()
  compiled_at = time.perf_counter()
  out = np.asarray(jax.block_until_ready(compiled(*args)))
  done = time.perf_counter()
  texts = [tokenizer.decode(row[n:n + max_new_tokens]) for row, n in zip(out, lengths)]
  return Generated(texts=texts, tokens=len(prompts) * max_new_tokens,
                   seconds=done - compiled_at, compile_seconds=compiled_at - began)


@dataclasses.dataclass(frozen=True)
class ContextRequest:
  """What every prompt continues: a document to read first (`text`, from --context_file)
  or a context read and saved before (`load`, --context_state); `save` (--save_context): a
  new folder to keep the read document in, with room for at least `room` (--context_room)
  more tokens."""
  text: bytes = b""
  load: str | None = None
  save: str | None = None
  room: int = 2048

  def check(self) -> Path | None:
    """UsageError naming the flags that do not go together; the folder to save to."""
    if self.text and self.load:
      raise UsageError("--context_file and --context_state: give one (a saved context has "
                       "read its document already)")
    if self.room <= 0:
      raise UsageError(f"--context_room must be positive, got {self.room}")
    if not self.save:
      return None
    if not self.text:
      raise UsageError("--save_context needs --context_file (the document to read and keep)")
    if jax.process_count() > 1:
      raise UsageError("--save_context runs in one process")
    return context_state.check_new(self.save, "--save_context")


def from_checkpoint(workdir: str, step: int | None, mesh_sizes: dict, prompts: list[bytes], *,
                    max_new_tokens: int, sampling: Sampling, seed: int = 0,
                    context: ContextRequest = ContextRequest(), tokenizer: str | None = None
                    ) -> tuple[ml_collections.ConfigDict, int, Generated]:
  """`generate` from checkpoint `step` (default: the latest intact one) of a pretraining
  workdir, on a mesh of `mesh_sizes`: (the run's config, the step, what was generated).
  `tokenizer`: a SentencePiece model file (default: the tokenizer of the run's data).
  Bad settings, a missing checkpoint, a tokenizer whose vocabulary is not the model's, a
  model that cannot decode, a saved context of another model or without room for the
  request: UsageError, before any compile."""
  try:
    check_request(prompts, max_new_tokens, sampling)
  except ValueError as e:
    raise UsageError(f"--{e}") from None
  save_to = context.check()
  workdir = str(Path(workdir).expanduser().absolute())
  ckpt, step, config = evaluation.checkpoint_to_read(workdir, step)
  tok = (tokenizers.SentencePieceTokenizer.from_file(tokenizer) if tokenizer
         else text_data.tokenizer_for(config.data.source, "the run's config.data.source"))
  if tok.vocab_size != config.model.vocab_size:
    where = "--tokenizer" if tokenizer else "the run's data (give --tokenizer)"
    raise UsageError(f"{where}: the {tok.name} tokenizer has {tok.vocab_size} ids, the "
                     f"checkpoint's model {config.model.vocab_size}")
  run = training.prepare(config, mesh_sizes=mesh_sizes, tokenizer=tok)
  try:  # shapes only: refuses a model that cannot decode one token at a time
    jax.eval_shape(lambda p: nnx.merge(run.graphdef, p).init_decode_state(1, 1),
                   run.abstract_params)
  except ValueError as e:
    raise UsageError(f"{config.model.name} cannot generate: {e}") from None
  need = max(len(tok.encode(p)) for p in prompts) + max_new_tokens
  with jax.set_mesh(run.mesh):
    read = None
    if context.load:
      read = context_state.load(context.load, run, "--context_state", need)
    params = evaluation.restore_params(ckpt, step, run)
    if context.text:
      read = context_state.read(run, params, tok.encode(context.text),
                                room=max(need, context.room if save_to else 0))
      if save_to:
        context_state.save(save_to, read, run, step)
    return config, step, generate(run, params, prompts, max_new_tokens=max_new_tokens,
                                  sampling=sampling, seed=seed, context=read, tokenizer=tok)
