"""Multi-query associative recall (MQAR), generated deterministically from a seed.

One sequence holds `context + 1` byte tokens:

  k_1 v_1 ... k_N v_N | filler ... | k_q1 v_q1 ... k_qN v_qN

N distinct keys bound to random values, filler, then every key queried once in a random
order, each followed by its value. Keys, values and filler come from disjoint token ranges,
so a value can only be predicted by recalling what its key was bound to. Training uses the
ordinary next-token loss; `accuracy` scores only the queried values. `mixture` cycles
through several (context, pairs) settings batch by batch, as Zoology trains one model on
all its settings at once.
"""
import grain
import numpy as np

from runtime.errors import UsageError
from runtime.text_data import READ_OPTIONS

KEYS = range(1, 65)
VALUES = range(65, 129)
FILLER = range(129, 256)


def check(context: int, num_pairs: int, field: str = "config.recall") -> None:
  """UsageError unless `num_pairs` fit the key range and their pairs fit `context`."""
  if not 0 < num_pairs <= len(KEYS):
    raise UsageError(f"{field}.num_pairs must be in 1..{len(KEYS)}, got {num_pairs!r}")
  if 4 * num_pairs > context:
    raise UsageError(f"{field}: context {context} cannot hold {num_pairs} pairs and their "
                     f"queries ({4 * num_pairs} tokens)")


def sequence(seed: int, index: int, context: int, num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
  """Tokens [context + 1] (int32) and the answer mask [context]: mask[t] says that
  tokens[t + 1] is a queried value (to be predicted from tokens[:t + 1])."""
  rng = np.random.default_rng([seed, index])
  keys = rng.choice(np.asarray(KEYS), num_pairs, replace=False)
  values = rng.integers(VALUES.start, VALUES.stop, num_pairs)
  order = rng.permutation(num_pairs)
  filler = rng.integers(FILLER.start, FILLER.stop, context + 1 - 4 * num_pairs)
  pairs = np.stack([keys, values], 1).reshape(-1)
  queries = np.stack([keys[order], values[order]], 1).reshape(-1)
  tokens = np.concatenate([pairs, filler, queries]).astype(np.int32)
  mask = np.zeros(context, bool)
  mask[context + 1 - 2 * num_pairs::2] = True  # the positions of the queried keys
  return tokens, mask


def dataset(*, seed: int, context: int, num_pairs: int, batch_size: int,
            first_index: int = 0, count: int | None = None,
            answers_only: bool = False) -> grain.IterDataset:
  """Batches of sequences first_index, first_index + 1, ... (endless when count is None):
  tokens [batch, context + 1], or with `answers_only` (tokens, loss weights [batch,
  context]) whose weights are 1 at the queried values' targets and 0 elsewhere, so the
  next-token loss scores only the answers, as Zoology trains (`runtime.training.loss_fn`)."""
  ds = grain.MapDataset.range(first_index, first_index + count if count else 2 ** 60)
  ds = ds.map(lambda i: sequence(seed, int(i), context, num_pairs)[0])
  if answers_only:
    weights = sequence(seed, 0, context, num_pairs)[1].astype(np.float32)  # same every index
    ds = ds.map(lambda tokens: (tokens, weights))
  return ds.to_iter_dataset(READ_OPTIONS).batch(batch_size, drop_remainder=True)


def mixture(*, seed: int, settings, batch_size: int,
            answers_only: bool = False) -> grain.IterDataset:
  """Endless batches cycling through `settings` ((context, num_pairs) pairs): batch i holds
  sequences of settings[i % len(settings)], each setting from its own index range."""
  parts = [dataset(seed=seed, context=context, num_pairs=pairs, batch_size=batch_size,
                   first_index=j * 2 ** 40, answers_only=answers_only)
           for j, (context, pairs) in enumerate(settings)]
  return parts[0] if len(parts) == 1 else grain.IterDataset.mix(parts)


def accuracy(logits: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> float:
  """Fraction of queried values predicted exactly (argmax) from logits [batch, context, vocab]."""
  hits = np.asarray(logits).argmax(-1) == np.asarray(tokens)[:, 1:]
  return float(hits[:, mask].mean())
