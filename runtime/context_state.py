"""A language model's decoding state after reading a document: test-time learning kept.

`read` runs `DecoderLM.decode` over a document's tokens at batch 1: attention fills its
key-value cache, the Titans and self-modifying memories and the CMS levels update their
weights as they do in training. The resulting `Context` is what the model learned from the
document; `generation.generate` continues several prompts from it (`batched` broadcasts the
per-row parts to the batch), and `save` / `load` keep it on disk, so one read serves many
later runs.

A saved context is a folder written atomically (into a temporary sibling, then renamed):
  context.json  tokens read, the room left, the model's name and vocabulary, the checkpoint;
  state/        the decoding state, an orbax StandardCheckpoint (restorable with orbax alone
                onto the abstract `init_decode_state(1, tokens + room)`).

`room` is how many more tokens the state can read (prompt and continuation together): a
full-attention cache is allocated for `tokens + room` positions; windowed attention and the
memories hold a constant-size state whatever the room.
"""
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from runtime import training
from runtime.errors import UsageError

META = "context.json"
STATE = "state"


@dataclasses.dataclass
class Context:
  state: Any    # DecoderLM.init_decode_state(1, tokens + room), with the document read
  tokens: int   # tokens read
  room: int     # tokens it can still read


def read(run: training.Run, params, tokens, room: int) -> Context:
  """The state after reading `tokens` (1-D ids, possibly none) with room for `room` more;
  call under jax.set_mesh(run.mesh)."""
  tokens = np.asarray(tokens, np.int32)

  def read_all(params, tokens):
    model = nnx.merge(run.graphdef, params)
    state = model.init_decode_state(1, tokens.shape[1] + room)
    return model.decode(tokens, state)[1] if tokens.shape[1] else state

  state = jax.jit(read_all)(params, jnp.asarray(tokens[None]))
  return Context(state=state, tokens=len(tokens), room=room)


def batched(model, state, batch: int):
  """`state` (batch 1) of `model` (a DecoderLM) with every per-row part broadcast to `batch`
  rows (traceable); the parts without a batch axis (cache positions, lengths, chunk clocks)
  stay as they are."""
  one, two = (jax.eval_shape(lambda b=b: model.init_decode_state(b, 1)) for b in (1, 2))

  def widen(x, a, b):
    if a.shape == b.shape:
      return x
    assert a.shape[0] == 1 and b.shape[0] == 2 and a.shape[1:] == b.shape[1:], (a, b)
    return jnp.broadcast_to(x, (batch,) + x.shape[1:])

  return jax.tree.map(widen, state, one, two)


def save(path, context: Context, run: training.Run, step: int) -> Path:
  """Writes `context` to the folder `path` (must not exist), atomically; returns it."""
  path = Path(path).expanduser().absolute()
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / STATE, context.state)
    checkpointer.wait_until_finished()
    (tmp / META).write_text(json.dumps(dict(
        tokens=context.tokens, room=context.room, model=run.config.model.name,
        vocab_size=run.config.model.vocab_size, step=step), indent=1))
    tmp.rename(path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def check_new(path, flag: str) -> Path:
  """`path` as a folder `save` may create, or UsageError naming `flag`."""
  path = Path(path).expanduser().absolute()
  if path.exists():
    raise UsageError(f"{flag} {str(path)!r} exists; give a new folder")
  if not path.parent.is_dir():
    raise UsageError(f"{flag} {str(path)!r}: its parent folder does not exist")
  return path


def load(path, run: training.Run, flag: str, need: int = 0) -> Context:
  """The context saved at `path` for `run`'s model (replicated on its mesh), or UsageError
  naming `flag`: not a saved context, another model or vocabulary, less room than `need`
  tokens, unreadable state."""
  path = Path(path).expanduser().absolute()
  try:
    meta = json.loads((path / META).read_text())
    tokens, room = int(meta["tokens"]), int(meta["room"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UsageError(f"{flag} {str(path)!r} is not a saved context (its {META}: "
                     f"{type(e).__name__}: {e})") from None
  model = run.config.model
  if (meta.get("model"), meta.get("vocab_size")) != (model.name, model.vocab_size):
    raise UsageError(f"{flag} {str(path)!r} was read by {meta.get('model')} (vocabulary "
                     f"{meta.get('vocab_size')}), not by this checkpoint's {model.name} "
                     f"(vocabulary {model.vocab_size})")
  if need > room:
    raise UsageError(f"{flag} {str(path)!r} has room for {room} more tokens; the longest "
                     f"prompt and the new tokens need {need}")
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  abstract = jax.eval_shape(
      lambda p: nnx.merge(run.graphdef, p).init_decode_state(1, tokens + room),
      run.abstract_params)
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                        abstract)
  try:
    state = ocp.StandardCheckpointer().restore(path / STATE, target)
  except (ValueError, OSError) as e:
    raise UsageError(f"{flag} {str(path)!r}: the state does not restore onto this model's "
                     f"({' '.join(str(e).split())[:300]})") from None
  return Context(state=state, tokens=tokens, room=room)
