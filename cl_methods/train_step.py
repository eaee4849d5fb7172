"""One training step of any ContinualMethod with any optax transformation.

    (loss, aux), g = value_and_grad(method.loss)(params, state, batch)
    g = method.transform_grads(g, ...)                  (A-GEM's projection)
    updates, opt_state = tx.update(g, opt_state, params)
    new_params = params + updates
    new_params, state = method.after_update(params, new_params, g, state, ...)

The function is pure, so the runner scans it over a chunk of batches inside one jit.
"""
import jax
import optax


def make_train_step(method, tx: optax.GradientTransformation):
  """Returns step(params, opt_state, state, batch, info, key)
  -> (params, opt_state, state, loss)."""

  def step(params, opt_state, state, batch, info, key):
    k_loss, k_grad, k_after = jax.random.split(key, 3)
    (loss, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(
        params, state, batch, k_loss)
    if method.transform_grads is not None:
      grads = method.transform_grads(grads, params, state, batch, k_grad)
    updates, opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if method.after_update is not None:
      new_params, state = method.after_update(params, new_params, grads, state, batch, aux,
                                              info, k_after)
    return new_params, opt_state, state, loss

  return step
