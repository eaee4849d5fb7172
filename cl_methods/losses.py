"""Masked classification losses shared by the methods.

Only the output units in an example's mask take part in its softmax (the scenario's layout,
see `scenarios.py`); masked-out logits are replaced by a large negative number rather than
-inf so that no 0 * inf appears in losses or gradients. Every loss is a mean over the
valid examples of the batch (zero when none is valid, e.g. an empty replay buffer).

An example is one prediction (logits (B, K), labels (B,)) or a sequence of them, as in a
language model's next-token prediction (logits (B, T, K), labels (B, T)); a sequence's value
is the mean over its positions. The mask is per example, (B, K), shared by its positions.
"""
import chex
import jax
import jax.numpy as jnp

MASKED_LOGIT = -1e30


def masked_logits(logits, mask):
  """Logits with inactive units pushed to MASKED_LOGIT (softmax weight exactly zero); a
  (B, K) mask applies to every position of (B, ..., K) logits."""
  return jnp.where(per_position(mask, logits), logits, MASKED_LOGIT)


def per_position(mask, logits):
  """The (B, K) mask shaped to broadcast against (B, ..., K) logits."""
  return mask.reshape(mask.shape[:1] + (1,) * (logits.ndim - mask.ndim) + mask.shape[1:])


def example_mean(values):
  """(B, ...) per-position values -> (B,) per-example means (the identity on (B,))."""
  return values.reshape(values.shape[0], -1).mean(-1)


def valid_mean(values, valid):
  """Mean of per-example values over the valid examples (0 when none is valid)."""
  w = valid.astype(values.dtype)
  return (values * w).sum() / jnp.maximum(w.sum(), 1.0)


def cross_entropy(logits, y, mask, valid):
  """Mean over valid examples of -log softmax(masked logits)[y] (per example, the mean over
  its positions)."""
  chex.assert_rank([mask, valid], [2, 1])
  chex.assert_equal_shape([logits[..., 0], y])
  logp = jax.nn.log_softmax(masked_logits(logits, mask))
  nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
  return valid_mean(example_mean(nll), valid)


def distillation(logits, teacher_logits, mask, valid, temperature):
  """Soft cross-entropy -sum_k p_teacher,k log p_student,k at temperature T over the active
  units (Hinton et al. 2015; used by LwF, Li & Hoiem 2017, eq. 2 with its T), not scaled
  by T^2; `mask` has the logits' shape or is (B, K)."""
  chex.assert_equal_shape([logits, teacher_logits])
  mask = jnp.broadcast_to(per_position(mask, logits) if mask.ndim == 2 else mask, logits.shape)
  p_teacher = jax.nn.softmax(jnp.where(mask, teacher_logits / temperature, MASKED_LOGIT))
  logp = jax.nn.log_softmax(jnp.where(mask, logits / temperature, MASKED_LOGIT))
  per_example = -jnp.where(mask, p_teacher * logp, 0.0).sum(-1)
  return valid_mean(example_mean(per_example), valid)


def accuracy_counts(scores, y, mask, valid):
  """(number correct, number valid) of argmax over the active units.

  An example whose scores are all masked (a template classifier with no template yet for
  any active unit) has no prediction and counts as wrong.
  """
  scores = masked_logits(scores, mask)
  predicted = jnp.max(scores, axis=-1) > MASKED_LOGIT / 2
  correct = (jnp.argmax(scores, axis=-1) == y) & predicted & valid
  return correct.sum(), valid.sum()
