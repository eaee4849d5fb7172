"""A slow, obviously correct self-modifying Titans memory: one token at a time.

Per sequence and head, a `lax.scan` over tokens carries every memory's boundary weights and
running weights as plain d x d matrices. At token t (x_t and q_t L2-normalised per head), a
chunk of a grid starts when t is a multiple of its chunk size, and then the running weights
of that grid's memories become their boundary weights; then

    k, v, eta, alpha  from M_k, M_v, M_eta, M_alpha at their boundary weights (eqs. 83-84)
    grad = jax.grad of 1/2 ||M(k) - M_boundary(v)||^2 at the boundary weights (eqs. 85-87, 91),
           clipped to a global norm (over the memory's matrices) of max_grad_norm
    W <- W (alpha I - eta x^ x^^T) - eta grad   for each matrix W of each memory,
         x^ the normalised input of that matrix at the boundary weights (eq. 88);
         W <- alpha W - eta grad with inner_rule "gd"; alpha = 1 without inner_decay
    o_t = M_memory(q_t) at its boundary weights (eq. 94)

With chunk sizes 1 this is the per-token recurrence of eq. 88. It shares with
`SelfModifyingMemory` only the parameters, the projections and the convolutions (no
gradient formula, no closed form, no chunk layout), so comparing the two tests the
chunk-wise path, values and gradients. No masks, no carried state: for tests only.
"""
import functools

import jax
import jax.numpy as jnp

from hope.neural_memory import clip_scale
from hope.self_modifying import NORM_EPS, SelfModifyingMemory


def _unit(x):
  """x / sqrt(|x|^2 + eps) along the last axis."""
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + NORM_EPS)


def _mlp(w, z):
  """M(z) = z + W_1 silu(W_2 z) for one head: w1, w2 [d, d], z [d]."""
  return z + w["w1"] @ jax.nn.silu(w["w2"] @ z)


def _inner_step(boundary, running, key, value, eta, alpha, max_grad_norm, rule):
  """The DGD step (eq. 88) or, with rule "gd", the gradient-descent step of one memory on
  the token (key, its own target M(value)): (the running weights after it, the gradient's
  norm before the clip)."""
  target = _mlp(boundary, value)
  grad = jax.grad(lambda w: 0.5 * jnp.sum((_mlp(w, key) - target) ** 2))(boundary)
  squared = sum(jnp.sum(g * g) for g in grad.values())
  grad = jax.tree.map(lambda g: clip_scale(squared, max_grad_norm) * g, grad)
  if rule == "gd":
    return {name: alpha * running[name] - eta * grad[name] for name in running}, jnp.sqrt(squared)
  inputs = {"w2": key, "w1": jax.nn.silu(boundary["w2"] @ key)}
  eye = jnp.eye(key.shape[0])
  return {name: running[name] @ (alpha * eye - eta * jnp.outer(_unit(inputs[name]),
                                                               _unit(inputs[name])))
          - eta * grad[name] for name in running}, jnp.sqrt(squared)


def _one_head(initial_other, initial_memory, eta_bias, alpha_bias, x, q, chunk_other,
              chunk_memory, max_grad_norm, rule, decay):
  """x, q [seq, d] of one head -> (o [seq, d], {eta, alpha [seq], gradient_norm [seq, 5],
  memory_key, memory_target [seq, d]})."""
  def token(carry, inputs):
    other_b, other_r, memory_b, memory_r = carry
    t, x_t, q_t = inputs
    other_b = jax.tree.map(lambda b, r: jnp.where(t % chunk_other == 0, r, b), other_b, other_r)
    memory_b = jax.tree.map(lambda b, r: jnp.where(t % chunk_memory == 0, r, b),
                            memory_b, memory_r)
    mk, mv, meta, malpha = (jax.tree.map(lambda a: a[i], other_b) for i in range(4))
    k = _unit(_mlp(mk, x_t))
    v = _mlp(mv, x_t)
    eta = jax.nn.sigmoid(jnp.mean(_mlp(meta, x_t)) + eta_bias)
    alpha = jax.nn.sigmoid(jnp.mean(_mlp(malpha, x_t)) + alpha_bias) if decay else 1.0
    step = lambda b, r: _inner_step(b, r, k, v, eta, alpha, max_grad_norm, rule)
    other_r, other_norms = jax.vmap(step)(other_b, other_r)
    memory_r, memory_norm = step(memory_b, memory_r)
    statistics = dict(eta=eta, alpha=jnp.asarray(alpha, jnp.float32),
                      gradient_norm=jnp.append(other_norms, memory_norm),
                      memory_key=k, memory_target=_mlp(memory_b, v))
    return (other_b, other_r, memory_b, memory_r), (_mlp(memory_b, q_t), statistics)

  init = (initial_other, initial_other, initial_memory, initial_memory)
  _, out = jax.lax.scan(token, init, (jnp.arange(x.shape[0]), x, q))
  return out


def reference_self_modifying(layer: SelfModifyingMemory, x: jax.Array) -> jax.Array:
  """x [batch, seq, dim] from the learned initial state -> y [batch, seq, dim]."""
  return _reference(layer, x)[0]


def reference_inner_statistics(layer: SelfModifyingMemory, x: jax.Array) -> dict:
  """`SelfModifyingMemory.inner_statistics` of x [batch, seq, dim] from the learned initial
  state, token by token."""
  return _reference(layer, x)[1]


def _reference(layer: SelfModifyingMemory, x: jax.Array) -> tuple:
  """(y [batch, seq, dim], the inner statistics) from the learned initial state."""
  batch, seq, _ = x.shape
  heads = (layer.num_heads, layer.head_dim)
  mask = jnp.ones((batch, seq), bool)
  xm, _ = layer.conv_x(x, layer.conv_x.empty_cache(batch), mask)
  q, _ = layer.conv_q(layer.query(x), layer.conv_q.empty_cache(batch), mask)
  other = {"w1": layer.other_w1[...], "w2": layer.other_w2[...]}        # [4, heads, d, d]
  memory = {"w1": layer.memory_w1[...], "w2": layer.memory_w2[...]}     # [heads, d, d]
  one_head = functools.partial(
      _one_head, chunk_other=layer.chunk_size_other, chunk_memory=layer.chunk_size_memory,
      max_grad_norm=layer.max_grad_norm, rule=layer.inner_rule, decay=layer.inner_decay)
  heads_axis = dict(eta=-1, alpha=-1, gradient_norm=-1, memory_key=1, memory_target=1)
  per_head = jax.vmap(one_head, in_axes=(1, 0, 0, 0, 1, 1), out_axes=(1, heads_axis))
  per_sequence = jax.vmap(per_head, in_axes=(None, None, None, None, 0, 0))
  o, statistics = per_sequence(other, memory, layer.eta_bias[...], layer.alpha_bias[...],
                               _unit(xm.reshape((batch, seq) + heads)), _unit(q))
  return layer.out(o.astype(layer.dtype)), statistics
