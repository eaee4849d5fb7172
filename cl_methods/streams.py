"""Context sequences (split, permuted, rotated) and the example streams drawn from them.

A *context* (van de Ven, Tuytelaars & Tolias 2022, "Three types of incremental learning",
sec. 2) is one stage of the problem: a subset of the classes (split benchmarks) or the whole
label set seen through a fixed input transformation (permuted / rotated benchmarks).

A `ContextSequence` describes T contexts over one base dataset without copying it: each
context has member indices into the base train and test sets, the dataset labels of its K
classes (in local order 0..K-1) and a pixel transform stored as a gather table
(`pixel_index`, `pixel_weight`, `taps` entries per output value), applied on the device:
    x_context[p] = sum_k pixel_weight[c, p, k] * x_base[pixel_index[c, p, k]].
Split contexts use the identity, permuted ones a permutation (one tap), rotated ones
bilinear interpolation (four taps).

Streams are sequences of (base index, context) pairs cut into chunks of `steps` batches,
served as `grain.MapDataset`s (random access, so a run can resume from any chunk):
* `task_based_stream`: contexts one after the other, `steps_per_context` batches each;
* `interleaved_stream`: all contexts mixed uniformly from the start (joint training);
* `task_free_stream`: no signalled boundaries; around each nominal boundary the probability
  of drawing from the next context rises linearly over `boundary_width` of a context's
  steps (the "fuzzy boundaries" stream of van de Ven et al.'s task-free protocol).
"""
import dataclasses

import grain
import numpy as np

from cl_methods import datasets as datasets_lib

KINDS = ("split", "permuted", "rotated")


@dataclasses.dataclass(frozen=True)
class ContextSequence:
  """T contexts over one base dataset (see module docstring)."""
  data: datasets_lib.ClassificationData
  kind: str
  classes: np.ndarray         # (T, K) dataset labels of each context's classes
  train_members: tuple        # T int arrays: indices into data.x_train
  test_members: tuple         # T int arrays: indices into data.x_test
  pixel_index: np.ndarray     # (T, P, taps) int32
  pixel_weight: np.ndarray    # (T, P, taps) float32

  @property
  def n_contexts(self) -> int:
    return self.classes.shape[0]

  @property
  def classes_per_context(self) -> int:
    return self.classes.shape[1]

  @property
  def disjoint_classes(self) -> bool:
    """True when no dataset label occurs in two contexts (split benchmarks)."""
    return np.unique(self.classes).size == self.classes.size

  @property
  def transforms_inputs(self) -> bool:
    return self.kind != "split"


def _identity_tables(n_contexts, n_pixels):
  index = np.broadcast_to(np.arange(n_pixels, dtype=np.int32)[None, :, None],
                          (n_contexts, n_pixels, 1)).copy()
  return index, np.ones((n_contexts, n_pixels, 1), np.float32)


def split_contexts(data, n_contexts: int, *, seed: int = 0,
                   shuffle_classes: bool = True) -> ContextSequence:
  """Splits the classes into `n_contexts` groups of equal size (split MNIST protocol).

  With `shuffle_classes` the class-to-context assignment is a random permutation drawn
  from `seed` (as in van de Ven et al.'s code); otherwise classes go in label order.
  """
  n_classes = data.n_classes
  if n_contexts < 1 or n_classes % n_contexts:
    raise ValueError(f"split: {n_classes} classes cannot be split evenly into {n_contexts} "
                     f"contexts; use a divisor of {n_classes}")
  order = (np.random.default_rng(seed).permutation(n_classes) if shuffle_classes
           else np.arange(n_classes))
  classes = order.reshape(n_contexts, -1).astype(np.int32)
  train = tuple(np.flatnonzero(np.isin(data.y_train, c)).astype(np.int32) for c in classes)
  test = tuple(np.flatnonzero(np.isin(data.y_test, c)).astype(np.int32) for c in classes)
  for t, (tr, te) in enumerate(zip(train, test)):
    if len(tr) == 0 or len(te) == 0:
      raise ValueError(f"split: context {t} (classes {classes[t].tolist()}) has no "
                       "training or no test examples")
  index, weight = _identity_tables(n_contexts, data.x_train.shape[1])
  return ContextSequence(data, "split", classes, train, test, index, weight)


def _all_members(data, n_contexts):
  classes = np.broadcast_to(np.arange(data.n_classes, dtype=np.int32),
                            (n_contexts, data.n_classes)).copy()
  train = tuple(np.arange(len(data.y_train), dtype=np.int32) for _ in range(n_contexts))
  test = tuple(np.arange(len(data.y_test), dtype=np.int32) for _ in range(n_contexts))
  return classes, train, test


def permuted_contexts(data, n_contexts: int, *, seed: int = 0) -> ContextSequence:
  """Every context holds all classes; context c > 0 permutes the input positions with a
  fixed random permutation (permuted MNIST, Goodfellow et al. 2013); context 0 is the
  original data. Image channels move together."""
  if n_contexts < 1:
    raise ValueError(f"permuted: need at least one context, got {n_contexts}")
  rng = np.random.default_rng(seed)
  channels = data.input_shape[-1] if data.is_image else 1
  n_sites = data.x_train.shape[1] // channels
  index = np.empty((n_contexts, n_sites * channels, 1), np.int32)
  for c in range(n_contexts):
    sites = np.arange(n_sites) if c == 0 else rng.permutation(n_sites)
    index[c, :, 0] = (sites[:, None] * channels + np.arange(channels)[None, :]).ravel()
  classes, train, test = _all_members(data, n_contexts)
  return ContextSequence(data, "permuted", classes, train, test, index,
                         np.ones(index.shape, np.float32))


def rotation_table(input_shape, degrees: float):
  """Gather table of a rotation about the image centre with bilinear interpolation.

  Output pixel (i, j) reads the input at the inversely rotated position; the four
  neighbours get the bilinear weights, positions outside the image contribute zero.
  Returns (index (P, 4) int32, weight (P, 4) float32) over the flattened H x W x C image.
  """
  h, w, ch = input_shape
  theta = np.deg2rad(degrees)
  ci, cj = (h - 1) / 2.0, (w - 1) / 2.0
  ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  di, dj = ii - ci, jj - cj
  si = ci + np.cos(theta) * di - np.sin(theta) * dj
  sj = cj + np.sin(theta) * di + np.cos(theta) * dj
  i0, j0 = np.floor(si).astype(int), np.floor(sj).astype(int)
  fi, fj = si - i0, sj - j0
  idx, wts = [], []
  for oi, oj, wt in ((0, 0, (1 - fi) * (1 - fj)), (0, 1, (1 - fi) * fj),
                     (1, 0, fi * (1 - fj)), (1, 1, fi * fj)):
    r, c = i0 + oi, j0 + oj
    ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    site = np.where(ok, r * w + c, 0)
    idx.append(site)
    wts.append(np.where(ok, wt, 0.0))
  site_idx = np.stack(idx, -1).reshape(h * w, 4)
  site_wt = np.stack(wts, -1).reshape(h * w, 4)
  index = site_idx[:, None, :] * ch + np.arange(ch)[None, :, None]
  weight = np.broadcast_to(site_wt[:, None, :], (h * w, ch, 4))
  return index.reshape(-1, 4).astype(np.int32), weight.reshape(-1, 4).astype(np.float32)


def rotated_contexts(data, n_contexts: int, *, max_degrees: float = 180.0) -> ContextSequence:
  """Every context holds all classes; context c rotates images by c * max_degrees / T."""
  if not data.is_image:
    raise ValueError(f"rotated: {data.name} inputs are not images (shape {data.input_shape}); "
                     "rotation needs height x width x channels")
  if n_contexts < 1:
    raise ValueError(f"rotated: need at least one context, got {n_contexts}")
  tables = [rotation_table(data.input_shape, c * max_degrees / n_contexts)
            for c in range(n_contexts)]
  classes, train, test = _all_members(data, n_contexts)
  return ContextSequence(data, "rotated", classes, train, test,
                         np.stack([t[0] for t in tables]), np.stack([t[1] for t in tables]))


def build(kind: str, data, n_contexts: int, *, seed: int = 0,
          shuffle_classes: bool = True) -> ContextSequence:
  """Builds a context sequence of the given kind (one of KINDS)."""
  if kind == "split":
    return split_contexts(data, n_contexts, seed=seed, shuffle_classes=shuffle_classes)
  if kind == "permuted":
    return permuted_contexts(data, n_contexts, seed=seed)
  if kind == "rotated":
    return rotated_contexts(data, n_contexts)
  raise ValueError(f"unknown context kind {kind!r}; choose from {', '.join(KINDS)}")


# ---------------------------------------------------------------------------------------
# Streams of (base index, context) pairs.


def _epoch_order(members, count, rng):
  """`count` members in the order of successive shuffled epochs (sampling without
  replacement within an epoch)."""
  epochs = -(-count // len(members))
  keys = rng.random((epochs, len(members)))
  return members[np.argsort(keys, axis=1)].ravel()[:count]


def _as_chunks(base_index, context, batch_size, steps_per_chunk):
  pairs = np.stack([base_index, context], -1).astype(np.int32)
  chunks = pairs.reshape(-1, steps_per_chunk, batch_size, 2)
  return grain.MapDataset.source(chunks)


def _check_sizes(total_steps, batch_size, steps_per_chunk):
  if batch_size < 1 or steps_per_chunk < 1 or total_steps % steps_per_chunk:
    raise ValueError(f"{total_steps} steps cannot be cut into chunks of {steps_per_chunk}")


def task_based_stream(contexts: ContextSequence, *, steps_per_context: int, batch_size: int,
                      steps_per_chunk: int, seed: int = 0) -> grain.MapDataset:
  """Contexts in order, `steps_per_context` batches each; element i is chunk i, an int32
  array (steps_per_chunk, batch_size, 2) of (base train index, context) pairs."""
  _check_sizes(steps_per_context, batch_size, steps_per_chunk)
  rng = np.random.default_rng(seed)
  n = steps_per_context * batch_size
  base = np.concatenate([_epoch_order(m, n, rng) for m in contexts.train_members])
  ctx = np.repeat(np.arange(contexts.n_contexts), n)
  return _as_chunks(base, ctx, batch_size, steps_per_chunk)


def interleaved_stream(contexts: ContextSequence, *, total_steps: int, batch_size: int,
                       steps_per_chunk: int, seed: int = 0) -> grain.MapDataset:
  """All contexts' training examples mixed in shuffled epochs (joint training)."""
  _check_sizes(total_steps, batch_size, steps_per_chunk)
  rng = np.random.default_rng(seed)
  base = np.concatenate(contexts.train_members)
  ctx = np.concatenate([np.full(len(m), c) for c, m in enumerate(contexts.train_members)])
  order = _epoch_order(np.arange(len(base)), total_steps * batch_size, rng)
  return _as_chunks(base[order], ctx[order], batch_size, steps_per_chunk)


def context_probabilities(n_contexts: int, steps_per_context: int,
                          boundary_width: float) -> np.ndarray:
  """(T * steps_per_context, T) probability of drawing each context at each step.

  Around the nominal boundary b = c * steps_per_context (c = 1..T-1) the probability moves
  linearly from context c-1 to context c over w = boundary_width * steps_per_context steps
  centred on b; elsewhere one context has probability one. w = 0 gives sharp boundaries.
  """
  if not 0.0 <= boundary_width <= 1.0:
    raise ValueError(f"boundary_width must be in [0, 1], got {boundary_width}")
  steps = np.arange(n_contexts * steps_per_context) + 0.5
  probs = np.zeros((len(steps), n_contexts))
  # Fraction of the way from context c-1 to context c, for each boundary c.
  width = boundary_width * steps_per_context
  cum = np.ones((len(steps), n_contexts))  # cum[:, c] = P(context >= c)
  for c in range(1, n_contexts):
    b = c * steps_per_context
    if width > 0:
      cum[:, c] = np.clip((steps - (b - width / 2)) / width, 0.0, 1.0)
    else:
      cum[:, c] = (steps >= b).astype(float)
  probs[:, :-1] = cum[:, :-1] - cum[:, 1:]
  probs[:, -1] = cum[:, -1]
  return probs


def task_free_stream(contexts: ContextSequence, *, steps_per_context: int, batch_size: int,
                     steps_per_chunk: int, boundary_width: float,
                     seed: int = 0) -> grain.MapDataset:
  """A stream without signalled boundaries: each example's context is drawn from
  `context_probabilities`, then the next example of that context's shuffled epochs."""
  _check_sizes(steps_per_context, batch_size, steps_per_chunk)
  rng = np.random.default_rng(seed)
  probs = context_probabilities(contexts.n_contexts, steps_per_context, boundary_width)
  u = rng.random((probs.shape[0], batch_size))
  ctx = (u[..., None] > np.cumsum(probs, axis=1)[:, None, :]).sum(-1).ravel()
  ctx = np.minimum(ctx, contexts.n_contexts - 1)
  base = np.empty_like(ctx)
  for c, members in enumerate(contexts.train_members):
    where = np.flatnonzero(ctx == c)
    if len(where):
      base[where] = _epoch_order(members, len(where), rng)
  return _as_chunks(base, ctx, batch_size, steps_per_chunk)
