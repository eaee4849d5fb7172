"""Suite `generate`: sampling speed by incremental decoding (`runtime.generation`).

For each config (randomly initialised: speed does not depend on the weights), on one
device:
- throughput: a prompt of `prompt_len` bytes, then `new_tokens` greedy tokens, one decode
  call per token inside one jitted loop (`generation.decode_batch`), at each batch size;
  tokens per second = batch x new_tokens / the call's median seconds (compile excluded);
- cost per token against the context: at batch 1, a document of `context` bytes is read
  (decode calls of `piece` bytes), then `probe_tokens` tokens are decoded one at a time;
  milliseconds per token at each context. Memories carry a fixed-size state, so their cost
  should not grow with the context; full attention reads a cache of the whole context.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.benchmarks.timing import interleaved_medians, load_average
from experiments.benchmarks.train_step import load_config
from runtime import generation, models

DEFAULT_MODELS = tuple(f"{name}:{size}" for size in ("tiny", "small")
                       for name in ("transformer", "titans_lmm", "titans_mac", "titans_mag",
                                    "titans_mal", "hope", "hope_attention", "memory_lm"))
DEFAULT_CONTEXT_MODELS = tuple(m for m in DEFAULT_MODELS if m.endswith(":tiny"))


def _model(entry: str):
  config = load_config(entry)
  return nnx.jit(lambda: models.build(config.model.to_dict(), 0))()


def throughput(model, batch: int, *, prompt_len: int, new_tokens: int, warmup: int,
               runs: int) -> float:
  """Tokens per second of greedy decoding at `batch` (module docstring)."""
  total = prompt_len + new_tokens
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, total), np.int32))
  lengths = jnp.full((batch,), prompt_len, jnp.int32)
  greedy = generation.Sampling(temperature=0)
  graphdef, params = nnx.split(model)
  run = jax.jit(lambda p, t: generation.decode_batch(
      nnx.merge(graphdef, p), t, lengths, jax.random.key(0), prefill=prompt_len,
      sampling=greedy)).lower(params, tokens).compile()
  seconds = interleaved_medians({"run": lambda: run(params, tokens)}, warmup, runs)["run"]
  return batch * new_tokens / seconds


def cost_per_token(model, context: int, *, piece: int, probe_tokens: int, runs: int) -> float:
  """Milliseconds per decoded token after reading `context` bytes, at batch 1."""
  graphdef, params = nnx.split(model)
  total = context + probe_tokens
  read = jax.jit(lambda p, t, s: nnx.merge(graphdef, p).decode(t, s))
  state = jax.jit(lambda p: nnx.merge(graphdef, p).init_decode_state(1, total))(params)
  text = np.random.default_rng(1).integers(0, 256, (1, context), np.int32)
  for start in range(0, context, piece):
    _, state = read(params, jnp.asarray(text[:, start:start + piece]), state)

  def probe(p, state):
    def one(_, carry):
      token, state = carry
      logits, state = nnx.merge(graphdef, p).decode(token, state)
      return jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32), state
    return jax.lax.fori_loop(0, probe_tokens, one, (jnp.zeros((1, 1), jnp.int32), state))

  compiled = jax.jit(probe).lower(params, state).compile()
  seconds = interleaved_medians({"probe": lambda: compiled(params, state)}, 1, runs)["probe"]
  return 1000 * seconds / probe_tokens


def run(models_list=DEFAULT_MODELS, context_models=DEFAULT_CONTEXT_MODELS, *,
        batches=(1, 8), prompt_len: int = 64, new_tokens: int = 64, contexts=(1024, 8192),
        piece: int = 256, probe_tokens: int = 32, warmup: int = 1, runs: int = 3) -> dict:
  rows = []
  for entry in models_list:
    model = _model(entry)
    row = dict(model=entry, load=load_average())
    for b in batches:
      row[f"tokens_per_second_batch{b}"] = throughput(
          model, b, prompt_len=prompt_len, new_tokens=new_tokens, warmup=warmup, runs=runs)
    if entry in context_models:
      for c in contexts:
        row[f"ms_per_token_at_{c}"] = cost_per_token(model, c, piece=piece,
                                                     probe_tokens=probe_tokens, runs=runs)
    rows.append(row)
    print(table(dict(batches=list(batches), contexts=list(contexts), rows=[row])), flush=True)
  return dict(batches=list(batches), prompt_len=prompt_len, new_tokens=new_tokens,
              contexts=list(contexts), piece=piece, probe_tokens=probe_tokens, warmup=warmup,
              runs=runs, rows=rows)


def table(result: dict) -> str:
  batches, contexts = result["batches"], result["contexts"]
  head = (f"{'model':<22}" + "".join(f"{'tok/s b' + str(b):>12}" for b in batches)
          + "".join(f"{'ms/tok @' + str(c):>14}" for c in contexts) + f"{'load':>6}")
  lines = [head]
  for r in result["rows"]:
    cells = "".join(f"{r[f'tokens_per_second_batch{b}']:>12.1f}" for b in batches)
    cells += "".join(f"{r[f'ms_per_token_at_{c}']:>14.2f}" if f"ms_per_token_at_{c}" in r
                     else f"{'-':>14}" for c in contexts)
    lines.append(f"{r['model']:<22}{cells}{r['load']:>6.1f}")
  return "\n".join(lines)
