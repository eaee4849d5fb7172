"""The repeated-passage probe: does a model remember a passage it read one distance ago?

One sequence holds `2 * passage + distance + 1` byte tokens of real text:

  P | F | P

P is `passage` consecutive bytes from a random place in the corpus, F is `distance` bytes
from another random place (the filler), then P again. A model that remembers P predicts
its second reading better than its first; a sliding-window model whose window is shorter
than `distance` cannot see the first reading and gains nothing. Sequences are a
deterministic function of (seed, index) and of the corpus, so every arm reads the same ones.

`reading_losses` turns per-position losses into the two numbers the probe reports: the mean
next-token loss over the first reading of P and over the second (in both, the positions
that predict P[1:], so the unpredictable jump into P is left out).
"""
import grain
import numpy as np

from runtime.errors import UsageError
from runtime.text_data import READ_OPTIONS


def check(tokens: np.ndarray, passage: int, distance: int, field: str) -> None:
  """UsageError unless `passage` and `distance` are positive and a sequence fits `tokens`."""
  if passage < 2:
    raise UsageError(f"{field}.passage must be at least 2 tokens, got {passage!r}")
  if distance < 1:
    raise UsageError(f"{field}.distance must be a positive integer, got {distance!r}")
  if len(tokens) < 4 * (passage + distance):
    raise UsageError(f"{field}: the corpus holds {len(tokens):,} tokens, too few for "
                     f"sequences of passage {passage} and distance {distance}")


def sequence(tokens: np.ndarray, seed: int, index: int, passage: int,
             distance: int) -> np.ndarray:
  """Tokens [2 * passage + distance + 1] (int32): P, the filler, P, and one more filler byte
  as the last target."""
  rng = np.random.default_rng([seed, index])
  p_start = rng.integers(0, len(tokens) - passage)
  f_start = rng.integers(0, len(tokens) - distance - 1)
  p = tokens[p_start:p_start + passage]
  f = tokens[f_start:f_start + distance + 1]
  return np.concatenate([p, f[:-1], p, f[-1:]]).astype(np.int32)


def dataset(tokens: np.ndarray, *, seed: int, passage: int, distance: int, batch_size: int,
            count: int | None = None) -> grain.IterDataset:
  """Batches [batch, 2 * passage + distance + 1] of sequences 0, 1, ... (endless when count
  is None)."""
  ds = grain.MapDataset.range(0, count if count else 2 ** 62)
  ds = ds.map(lambda i: sequence(tokens, seed, int(i), passage, distance))
  return ds.to_iter_dataset(READ_OPTIONS).batch(batch_size, drop_remainder=True)


def reading_losses(position_loss: np.ndarray, passage: int, distance: int) -> dict:
  """{first, second, gain = first - second}: mean loss over the positions that predict
  P[1:] in each reading, from per-position losses [..., 2 * passage + distance]."""
  position_loss = np.asarray(position_loss, np.float64)
  first = position_loss[..., 0:passage - 1].mean()
  start = passage + distance
  second = position_loss[..., start:start + passage - 1].mean()
  return dict(first=float(first), second=float(second), gain=float(first - second))
