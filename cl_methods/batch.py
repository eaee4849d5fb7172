"""What a method sees: a `Batch`, and how batches are gathered on the device.

A `Batch` holds the inputs, the target output unit, the per-example mask of output units
that take part in the softmax (the scenario's layout, see `scenarios.py`), the context id
(used only by methods that serve Task-IL, where the context is given) and a validity flag
(False for padding and for empty replay-buffer slots). Every loss weights examples by
`valid`.

`DeviceContexts` keeps a ContextSequence and an OutputLayout as device arrays so that a
jitted step gathers its batch from (base index, context) pairs: no per-step host copies
of images and no Python work per example.
"""
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np


class Batch(NamedTuple):
  x: jax.Array        # (B, *input_shape) float32
  y: jax.Array        # (B,) int32 target output unit
  mask: jax.Array     # (B, n_units) bool units active for this example
  context: jax.Array  # (B,) int32 context id
  valid: jax.Array    # (B,) bool


class DeviceContexts(NamedTuple):
  """Device-side arrays of a ContextSequence and its OutputLayout."""
  x_train: jax.Array        # (N, P)
  y_train: jax.Array        # (N,)
  x_test: jax.Array         # (M, P)
  y_test: jax.Array         # (M,)
  pixel_index: jax.Array    # (T, P, taps)
  pixel_weight: jax.Array   # (T, P, taps)
  unit_of_label: jax.Array  # (T, n_labels)
  train_mask: jax.Array     # (T, n_units)
  test_mask: jax.Array      # (T, n_units)


def to_device(contexts, layout) -> DeviceContexts:
  d = contexts.data
  return DeviceContexts(
      x_train=jnp.asarray(d.x_train), y_train=jnp.asarray(d.y_train),
      x_test=jnp.asarray(d.x_test), y_test=jnp.asarray(d.y_test),
      pixel_index=jnp.asarray(contexts.pixel_index),
      pixel_weight=jnp.asarray(contexts.pixel_weight),
      unit_of_label=jnp.asarray(layout.unit_of_label),
      train_mask=jnp.asarray(layout.train_mask), test_mask=jnp.asarray(layout.test_mask))


def gather(arrays: DeviceContexts, base_index, context, valid=None, *, split: str,
           input_shape, transform: bool) -> Batch:
  """Builds a Batch from base indices and context ids (inside jit).

  Args:
    split: "train" or "test": which base set and which layout mask to use.
    transform: apply the contexts' pixel gather tables (False for split benchmarks, whose
      tables are the identity).
  """
  x_all, y_all, masks = ((arrays.x_train, arrays.y_train, arrays.train_mask) if split == "train"
                         else (arrays.x_test, arrays.y_test, arrays.test_mask))
  x = x_all[base_index]
  if transform:
    index = arrays.pixel_index[context]      # (B, P, taps)
    weight = arrays.pixel_weight[context]
    b, p, taps = index.shape
    picked = jnp.take_along_axis(x, index.reshape(b, p * taps), axis=1).reshape(b, p, taps)
    x = (picked * weight).sum(-1)
  y = arrays.unit_of_label[context, y_all[base_index]]
  chex.assert_rank([base_index, context], 1)
  if valid is None:
    valid = jnp.ones(base_index.shape, bool)
  return Batch(x=x.reshape((x.shape[0],) + tuple(input_shape)), y=y, mask=masks[context],
               context=context, valid=valid)


def padded_members(members, size: int, rng: np.random.Generator):
  """Up to `size` members drawn without replacement, padded to `size` with a validity flag.

  Returns (index (size,) int32, valid (size,) bool); fixed shapes keep one compile for all
  contexts.
  """
  members = np.asarray(members)
  take = members if len(members) <= size else rng.choice(members, size, replace=False)
  index = np.zeros(size, np.int32)
  index[: len(take)] = take
  return index, np.arange(size) < len(take)
