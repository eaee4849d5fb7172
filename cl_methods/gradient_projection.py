"""Optimization-based: A-GEM (Chaudhry et al. 2019, "Efficient lifelong learning with
A-GEM", eq. 11).

With g the gradient on the current batch and g_ref the gradient of the loss on a batch
drawn from an episodic memory of past examples, A-GEM steps along
    g~ = g - (g . g_ref) / (g_ref . g_ref + eps) * g_ref   if g . g_ref < 0,   else g,
so that g~ . g_ref >= 0: to first order a step -lr * g~ never increases the loss on the
memory batch. The memory here is a reservoir buffer (`replay_buffer.py`) fed with every
training batch, which also serves task-free streams; inner products run over the whole
parameter pytree.
"""
import chex
import jax
import jax.numpy as jnp

from cl_methods import losses
from cl_methods import method as method_lib
from cl_methods import pytree_math
from cl_methods import replay_buffer


def project(grads, reference_grads, eps: float):
  """A-GEM's projection of `grads` against `reference_grads` (eq. 11)."""
  chex.assert_trees_all_equal_shapes(grads, reference_grads)
  dot = pytree_math.tree_dot(grads, reference_grads)
  ref_sq = pytree_math.tree_dot(reference_grads, reference_grads)
  coef = jnp.where(dot < 0, dot / (ref_sq + eps), 0.0)
  return jax.tree.map(lambda g, r: g - coef * r, grads, reference_grads)


def agem(apply_fn, *, buffer_size: int, eps: float) -> method_lib.ContinualMethod:
  """A-GEM with a reservoir memory of `buffer_size` examples."""

  def items_of(batch):
    return {"x": batch.x, "y": batch.y, "mask": batch.mask}

  def init_state(params, example):
    del params
    return replay_buffer.init(buffer_size, items_of(example))

  def reference_loss(params, memory, key, n):
    items, valid = replay_buffer.sample(memory, n, key)
    logits = apply_fn(params, items["x"])
    return losses.cross_entropy(logits, items["y"], items["mask"], valid)

  def transform_grads(grads, params, memory, batch, key):
    reference = jax.grad(reference_loss)(params, memory, key, batch.x.shape[0])
    return project(grads, reference, eps)

  def after_update(old_params, new_params, grads, memory, batch, aux, info, key):
    del old_params, grads, aux, info
    return new_params, replay_buffer.add(memory, items_of(batch), batch.valid, key)

  return method_lib.ContinualMethod(
      name="agem", family="optimization", loss=method_lib.cross_entropy_loss(apply_fn),
      predict=method_lib.classifier_predict(apply_fn), init_state=init_state,
      transform_grads=transform_grads, after_update=after_update)
