"""Deep Momentum Gradient Descent (DMGD; Nested Learning NeurIPS eq. 23, arXiv §4.3).

The momentum is a small MLP m_phi trained in context on the gradients, and the step is its
read-out at the current gradient:

  phi_{i+1} = decay phi_i - inner_lr grad_phi L2(phi_i; u_i)        (eq. 23, outer form)
  W_{i+1}   = W_i - learning_rate m_{phi_{i+1}}(u_i),                 u_i = g_i.

The reference leaves the inner objective open ("e.g. <m(u), 1>"). Here it is the L2
regression of the gradient on itself, L2(phi; u) = 1/2 ||m_phi(u) - u||^2: with a linear m
and zero start this is delta-rule momentum acting on the gradient's rows, and the MLP lets
the memory store a non-linear summary of past gradients. m_phi(u) = silu(u A) B acts on the
last axis of each parameter's gradient (the rows of a matrix, a vector as one row), one
(A, B) per parameter tensor: A [d, hidden] starts at N(0, 1/d), B [hidden, d] at zero, so
the first step is a plain (scaled) gradient step of size learning_rate * inner_lr ||.||.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class DeepMomentumState(NamedTuple):
  memory: optax.Updates  # per parameter: (A [d, hidden], B [hidden, d])


def _rows(x):
  return x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)


def memory_read(memory, u):
  """m_phi(u) = silu(u A) B on the rows of u."""
  a, b = memory
  return jax.nn.silu(u @ a) @ b


def memory_loss(memory, u):
  """L2(phi; u) = 1/2 sum over rows ||m_phi(u) - u||^2."""
  return 0.5 * jnp.sum((memory_read(memory, u) - u) ** 2)


def deep_momentum(learning_rate: float, inner_lr: float = 0.1, decay: float = 1.0,
                  hidden: int | None = None, seed: int = 0) -> optax.GradientTransformation:
  """DMGD (see the module docstring): an MLP memory per parameter tensor, updated every step.

  hidden: the MLP's width (default: d, the parameter's last dimension). decay < 1 forgets
  old gradients (the paper's alpha). seed: the initialisation of A.
  """
  if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
    raise ValueError(f"hidden must be a positive integer or None, got {hidden!r}")

  def init(params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    memory = []
    for key, p in zip(keys, leaves):
      d = p.shape[-1] if p.ndim else 1
      h = hidden or d
      memory.append((jax.random.normal(key, (d, h), jnp.float32) / jnp.sqrt(d),
                     jnp.zeros((h, d), jnp.float32)))
    return DeepMomentumState(memory=jax.tree.unflatten(treedef, memory))

  def update(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    memories = treedef.flatten_up_to(state.memory)
    new_memories, steps = [], []
    for g, memory in zip(leaves, memories):
      u = _rows(g.astype(jnp.float32))
      grad = jax.grad(memory_loss)(memory, u)
      memory = tuple(decay * w - inner_lr * dw for w, dw in zip(memory, grad))
      new_memories.append(memory)
      steps.append((-learning_rate * memory_read(memory, u)).reshape(g.shape).astype(g.dtype))
    return (jax.tree.unflatten(treedef, steps),
            DeepMomentumState(memory=jax.tree.unflatten(treedef, new_memories)))

  return optax.GradientTransformation(init, update)
