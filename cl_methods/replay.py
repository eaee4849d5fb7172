"""Replay: experience replay (ER) and DER++ over a reservoir buffer of past examples.

* ER (Chaudhry et al. 2019, "On tiny episodic memories in continual learning", Alg. 1 with
  reservoir sampling): every step adds the cross-entropy on a batch drawn from the buffer,
      L = CE(current batch) + CE(replayed batch),
  and offers the current batch to the buffer.
* DER++ (Buzzega et al. 2020, "Dark experience for general continual learning", eq. 6):
  the buffer also stores the logits z the network produced for each example when it was
  inserted; two independent buffer batches give
      L = CE(current) + alpha * ||f(x') - z'||^2 + beta * CE(f(x''), y'').
  The squared error is a mean over the example's active output units (and, for a sequence,
  over its positions).

Replayed examples keep the output mask of their own context, so in Task-IL each one is
scored on its own head.
"""
import jax
import jax.numpy as jnp

from cl_methods import batch as batch_lib
from cl_methods import losses
from cl_methods import method as method_lib
from cl_methods import replay_buffer


def _example_items(batch):
  return {"x": batch.x, "y": batch.y, "mask": batch.mask, "context": batch.context}


def _as_batch(items, valid):
  return batch_lib.Batch(x=items["x"], y=items["y"], mask=items["mask"],
                         context=items["context"], valid=valid)


def experience_replay(apply_fn, *, buffer_size: int) -> method_lib.ContinualMethod:
  """ER with a reservoir buffer of `buffer_size` examples."""

  def init_state(params, example):
    del params
    return replay_buffer.init(buffer_size, _example_items(example))

  def loss(params, buffer, batch, key):
    logits = apply_fn(params, batch.x)
    current = losses.cross_entropy(logits, batch.y, batch.mask, batch.valid)
    replayed = _as_batch(*replay_buffer.sample(buffer, batch.x.shape[0], key))
    past = losses.cross_entropy(apply_fn(params, replayed.x), replayed.y, replayed.mask,
                                replayed.valid)
    return current + past, {"logits": logits}

  def after_update(old_params, new_params, grads, buffer, batch, aux, info, key):
    del old_params, grads, aux, info
    return new_params, replay_buffer.add(buffer, _example_items(batch), batch.valid, key)

  return method_lib.ContinualMethod(
      name="er", family="replay", loss=loss,
      predict=method_lib.classifier_predict(apply_fn), init_state=init_state,
      after_update=after_update)


def dark_experience_replay(apply_fn, *, buffer_size: int, alpha: float,
                           beta: float) -> method_lib.ContinualMethod:
  """DER++: logit matching (alpha) plus label replay (beta) on two buffer batches."""

  def init_state(params, example):
    items = _example_items(example)
    items["logits"] = jnp.zeros(jax.eval_shape(apply_fn, params, example.x).shape, jnp.float32)
    return replay_buffer.init(buffer_size, items)

  def loss(params, buffer, batch, key):
    k1, k2 = jax.random.split(key)
    logits = apply_fn(params, batch.x)
    current = losses.cross_entropy(logits, batch.y, batch.mask, batch.valid)
    items, valid = replay_buffer.sample(buffer, batch.x.shape[0], k1)
    logits_now = apply_fn(params, items["x"])
    sq = jnp.where(losses.per_position(items["mask"], logits_now),
                   (logits_now - items["logits"]) ** 2, 0.0)
    per_example = losses.example_mean(sq.sum(-1)) / jnp.maximum(items["mask"].sum(-1), 1)
    logit_term = losses.valid_mean(per_example, valid)
    items2, valid2 = replay_buffer.sample(buffer, batch.x.shape[0], k2)
    label_term = losses.cross_entropy(apply_fn(params, items2["x"]), items2["y"],
                                      items2["mask"], valid2)
    return current + alpha * logit_term + beta * label_term, {"logits": logits}

  def after_update(old_params, new_params, grads, buffer, batch, aux, info, key):
    del old_params, grads, info
    items = _example_items(batch)
    items["logits"] = jax.lax.stop_gradient(aux["logits"])
    return new_params, replay_buffer.add(buffer, items, batch.valid, key)

  return method_lib.ContinualMethod(
      name="derpp", family="replay", loss=loss,
      predict=method_lib.classifier_predict(apply_fn), init_state=init_state,
      after_update=after_update)
