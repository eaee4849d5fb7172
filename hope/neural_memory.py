"""Titans neural long-term memory (LMM; Behrouz, Zhong & Mirrokni 2025, eqs. 8-16).

The memory M is an MLP whose weights are state, one per (sequence, head). For token x_t:

  k_t = x_t W_K,  v_t = x_t W_V,  q_t = x_t W_Q                        (eq. 11, and eq. 15 for q)
  each followed by a causal depthwise short convolution and SiLU; q and k L2-normalised (§4.4)
  l(M; k_t, v_t) = ||M(k_t) - v_t||^2                                   (eq. 12)
  S_t = eta_t S_{t-1} - theta_t grad l(M_{t'}; k_t, v_t)                (eqs. 9-10, 14)
  M_t = (1 - alpha_t) M_{t-1} + S_t                                     (eq. 13)
  y_t = M_t(q_t)                                                        (eq. 15)

with theta_t = max_lr * sigmoid(x_t w_theta + b_theta) (learning rate), eta_t = sigmoid(.)
(momentum decay) and alpha_t = sigmoid(.) (forgetting), all per token and per head. The
gradient is taken at the weights of the chunk start, t' = t - (t mod b) (§3.2, the
"mini-batch gradient descent" of TTT; b = 1 is the plain recurrence). Each token's gradient
is clipped to a global norm (over the memory layers) of at most `max_grad_norm`: without it
the inner gradient descent can diverge once theta / (1 - eta) times the curvature of the
deep memory's loss passes 2, and the weights, then the outputs, overflow; clipped, they
grow at most linearly and decay forgets them. The clip is per token, so it is exact in both implementations. The read-out uses the
weights updated through token t. The initial weights M_0 (one set per head) are outer
parameters, learned by the outer optimizer. Output: per-head RMSNorm, times SiLU(x W_g)
(the Titans §4.4 output gate, optional), then a projection back to `dim`.

Memory MLP: depth L >= 1; depth 1 is a linear map head_dim -> head_dim, depth L >= 2 has
hidden width expansion * head_dim with SiLU between layers (not after the last). There is
no residual path inside the memory (M(k) = MLP(k), eq. 12 as written): the block around
the mixer already has a residual stream, an identity path inside M would only add q_t to
the read-out, and the learned M_0 can represent a near-identity map where that helps.

Two implementations of the same computation, tested against each other:
- `implementation="reference"`: `reference_memory`, a `lax.scan` over tokens that takes
  each gradient with `jax.grad` at the chunk-start weights and updates S and M token by token.
- `implementation="chunked"` (default): `chunked_memory`, a `lax.scan` over chunks of b
  tokens; see that function for the dual form. Per-token weights are never materialised.
  With `kernel="pallas"` each chunk runs as one Pallas kernel (`hope.fused_kernel`).

Inner rule: `rule=` any optax transformation replaces the momentum update (reference
implementation only); the gates theta_t, eta_t, alpha_t reach it as the extra arguments
learning_rate, momentum and decay of its update (see `reference_memory`, `hope.optimizers.gates`).

Masking: a token with mask 0 (padding, given by the caller or added internally to reach a
multiple of the chunk size) leaves the state unchanged: theta = 0, eta = 1, alpha = 0 AND the
write M_t = (1 - alpha_t) M_{t-1} + m_t S_t is gated by m_t (S_t is still added when only
theta = 0). Its output is zero. With momentum off (eta = 0 everywhere) S_t = -theta_t grad
is used at once, and the returned momentum is the one passed in (zeros).

Streaming: one call over a sequence equals calls over consecutive pieces with the returned
state passed to the next call, provided every piece except the last has a length that is a
multiple of `chunk_size` (chunk boundaries are counted from each call's first token). The
state holds the memory weights, the momentum and the last conv_width-1 projected inputs of
q, k and v, so the short convolutions also continue exactly.

Numerics: the memory runs in float32 whatever `dtype` the projections use. Inside jit a
non-finite value cannot raise; `check_state_finite(state)` on the returned state (outside
jit) raises FloatingPointError naming the quantity (weights of layer l, momentum of layer l,
or a conv cache) and the batch rows that went non-finite.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from hope.fused_kernel import check_kernel, fused_kernel
from hope.layers import Dense, RMSNorm, first_nonfinite, l2_normalize, param
from hope.short_conv import ShortConv

IMPLEMENTATIONS = ("chunked", "reference")
# max_lr defaults to 0.01: with 0.1 the depth-2 memory's inner updates diverge within 128
# tokens of real text at initialisation (theta / (1 - eta) ~ 0.4 times the curvature that
# the MLP's weights give the inner loss is past gradient descent's stability bound of 2).
# Initial gate biases: theta starts at max_lr / 2, eta at sigmoid(2) = 0.88, alpha at
# sigmoid(-4) = 0.018 (a half-life of about 38 tokens).
LR_BIAS, MOMENTUM_BIAS, DECAY_BIAS = 0.0, 2.0, -4.0


@struct.dataclass
class DecodeState:
  """The memory while decoding (`NeuralMemory.decode`): its state, the weights at the start
  of the current chunk and the chunk's tokens read so far (`clock`, int32)."""
  memory: "MemoryState"
  chunk_start: tuple[jax.Array, ...]
  clock: jax.Array


@struct.dataclass
class MemoryState:
  """Per-sequence memory state.

  weights, momentum: tuples over memory layers of [batch, heads, d_in, d_out] (z @ W); with an
    optax `rule`, momentum is the rule's state, leading axes [batch, heads].
  conv: (q, k, v) caches of the last conv_width-1 projected inputs, [batch, w-1, heads, head_dim].
  """
  weights: tuple[jax.Array, ...]
  momentum: tuple[jax.Array, ...]
  conv: tuple[jax.Array, jax.Array, jax.Array]


def memory_mlp(weights, x: jax.Array) -> jax.Array:
  """M(x): x @ W_1, SiLU, ..., @ W_L (no activation after the last layer)."""
  for i, w in enumerate(weights):
    x = x @ w
    if i < len(weights) - 1:
      x = jax.nn.silu(x)
  return x


def memory_loss(weights, k: jax.Array, v: jax.Array) -> jax.Array:
  """The associative-memory loss l(M; k, v) = ||M(k) - v||^2 (eq. 12), summed over tokens."""
  return jnp.sum((memory_mlp(weights, k) - v) ** 2)


def check_clip_norm(owner: str, max_grad_norm) -> None:
  """ValueError unless max_grad_norm is None (no clip) or a positive finite number."""
  if max_grad_norm is not None and not (max_grad_norm > 0 and np.isfinite(max_grad_norm)):
    raise ValueError(f"{owner}max_grad_norm must be a positive finite number or None (no "
                     f"clip), got {max_grad_norm!r}")


def clip_scale(squared_norm: jax.Array, max_grad_norm: float | None) -> jax.Array:
  """min(1, max_grad_norm / ||g||) for a token's squared gradient norm (1 without a clip)."""
  if max_grad_norm is None:
    return jnp.ones_like(squared_norm)
  return jnp.minimum(1.0, max_grad_norm * jax.lax.rsqrt(squared_norm + 1e-12))


def reference_memory(weights, momentum, q, k, v, lr, eta, retain, write, *, chunk_size: int,
                     use_momentum: bool, max_grad_norm: float | None = None,
                     rule: optax.GradientTransformation | None = None):
  """The per-token recurrence for one (sequence, head), written to be read.

  weights/momentum: tuples of [d_in, d_out]; q, k, v [seq, head_dim]; lr (theta), eta,
  retain (1 - alpha), write (the mask m) [seq]. For every token t:
    W' = weights at the start of t's chunk (t' = t - t mod chunk_size)
    g  = grad l(W'; k_t, v_t), clipped to a global norm of max_grad_norm
    S  = eta_t S - theta_t g                             (eqs. 10, 14)
    W  = (1 - alpha_t) W + m_t S                         (eq. 13, gated by the mask)
    y_t = M_W(q_t)                                       (eq. 15)
  With an optax `rule`, `momentum` is the rule's state and the update is instead
    u, state = rule.update(grad l(W'; k_t, v_t), state, W,
                           learning_rate=theta_t, momentum=eta_t, decay=alpha_t)
    W = W + m_t u      (W and the rule's state unchanged at masked tokens)
  so the gates reach the rule through `hope.optimizers.gate`; `hope.optimizers.titans_rule()`
  gives back the recurrence above. Returns (y [seq, head_dim], final weights, final momentum
  or rule state).
  """
  y, w, s, _ = memory_recurrence(weights, momentum, weights, 0, q, k, v, lr, eta, retain, write,
                                 chunk_size=chunk_size, max_grad_norm=max_grad_norm, rule=rule)
  return y, w, (s if use_momentum or rule is not None else momentum)


def memory_recurrence(weights, momentum, chunk_start_weights, clock, q, k, v, lr, eta, retain,
                      write, *, chunk_size: int, max_grad_norm: float | None = None,
                      rule: optax.GradientTransformation | None = None):
  """`reference_memory`'s recurrence entered `clock` tokens into a chunk whose start
  weights W' are `chunk_start_weights` (clock 0: a chunk starts at the first token).

  Returns (y [seq, head_dim], weights, momentum or rule state, the start weights of the
  chunk the last token lies in)."""
  chunk_start = (clock + jnp.arange(q.shape[0])) % chunk_size == 0
  if rule is not None:
    rule = optax.with_extra_args_support(rule)

  def step(carry, token):
    w, s, w_start = carry
    q_t, k_t, v_t, lr_t, eta_t, retain_t, write_t, start_t = token
    w_start = jax.tree.map(lambda old, new: jnp.where(start_t, new, old), w_start, w)
    grad = jax.grad(memory_loss)(w_start, k_t, v_t)
    scale = clip_scale(sum(jnp.sum(g * g) for g in grad), max_grad_norm)
    grad = tuple(scale * g for g in grad)
    if rule is None:
      s = jax.tree.map(lambda s_l, g_l: eta_t * s_l - lr_t * g_l, s, grad)
      w = jax.tree.map(lambda w_l, s_l: retain_t * w_l + write_t * s_l, w, s)
    else:
      u, new_s = rule.update(grad, s, w, learning_rate=lr_t, momentum=eta_t, decay=1 - retain_t)
      s = jax.tree.map(lambda old, new: jnp.where(write_t > 0, new, old), s, new_s)
      w = jax.tree.map(lambda w_l, u_l: w_l + write_t * u_l, w, u)
    return (w, s, w_start), memory_mlp(w, q_t)

  tokens = (q, k, v, lr, eta, retain, write, chunk_start)
  (w, s, w_start), y = jax.lax.scan(step, (weights, momentum, chunk_start_weights), tokens)
  return y, w, s, w_start


def segment_products(g: jax.Array) -> jax.Array:
  """P[t, s] = prod_{j=s+1..t} g_j for s <= t (1 on the diagonal), 0 for s > t; g [b].

  Built from masked cumulative products, not from differences of log-cumsums, so factors
  at or near 0 (eta -> 0, 1 - alpha -> 0) stay exact.
  """
  idx = jnp.arange(g.shape[-1])
  factors = jnp.where(idx[None, :] > idx[:, None], g[None, :], 1.0)  # [s, j]: g_j for j > s
  products = jnp.cumprod(factors, axis=-1)                           # [s, t]
  return jnp.where(idx[:, None] >= idx[None, :], products.T, 0.0)


def _chunk_coefficients(lr, eta, retain, write, use_momentum: bool):
  """The chunk's mixing coefficients from its gates [b] (see `chunked_memory`).

  Returns (A [b, b], c [b], d [b], f_b, momentum weights theta_i E_{b,i} [b]); the last
  three are zeros when momentum is off.
  """
  decay = segment_products(retain)      # R[t, s] = prod_{s<j<=t} (1 - alpha_j)
  c = jnp.cumprod(retain)               # c_t = prod_{j<=t} (1 - alpha_j)
  if not use_momentum:
    zeros = jnp.zeros_like(c)
    return decay * (write * lr)[None, :], c, zeros, zeros[-1], zeros
  carry = segment_products(eta)         # E[s, i] = prod_{i<j<=s} eta_j
  f = jnp.cumprod(eta)                  # f_s = prod_{j<=s} eta_j
  written = decay * write[None, :]      # R[t, s] m_s
  return (written @ carry) * lr[None, :], c, written @ f, f[-1], lr * carry[-1]


def _chunk(weights, momentum, q, k, v, coefficients, use_momentum: bool, max_grad_norm):
  """One chunk of b tokens in dual form; see `chunked_memory`."""
  a, c, d, f_end, momentum_end = coefficients
  depth = len(weights)

  def loss_with_taps(taps):
    h, inputs = k, []
    for i, (w, tap) in enumerate(zip(weights, taps)):
      inputs.append(h)
      h = h @ w + tap
      if i < depth - 1:
        h = jax.nn.silu(h)
    return jnp.sum((h - v) ** 2), inputs

  taps = tuple(jnp.zeros((k.shape[0], w.shape[1]), k.dtype) for w in weights)
  deltas, inputs = jax.grad(loss_with_taps, has_aux=True)(taps)
  # ||u^l_i|| = ||h^l_i|| ||delta^l_i||: the clip scales each token's deltas.
  squared = sum(jnp.sum(h * h, -1) * jnp.sum(d * d, -1) for h, d in zip(inputs, deltas))
  scale = clip_scale(squared, max_grad_norm)[:, None]
  deltas = tuple(scale * d for d in deltas)

  z = q
  for i, (w0, h, delta) in enumerate(zip(weights, inputs, deltas)):
    out = c[:, None] * (z @ w0) - (a * (z @ h.T)) @ delta
    if use_momentum:
      out = out + d[:, None] * (z @ momentum[i])
    z = jax.nn.silu(out) if i < depth - 1 else out

  new_weights = tuple(c[-1] * w0 - h.T @ (a[-1][:, None] * delta)
                      for w0, h, delta in zip(weights, inputs, deltas))
  if use_momentum:
    new_weights = tuple(w + d[-1] * s0 for w, s0 in zip(new_weights, momentum))
    momentum = tuple(f_end * s0 - h.T @ (momentum_end[:, None] * delta)
                     for s0, h, delta in zip(momentum, inputs, deltas))
  return z, new_weights, momentum


def chunked_memory(weights, momentum, q, k, v, lr, eta, retain, write, *, chunk_size: int,
                   use_momentum: bool, max_grad_norm: float | None = None, kernel: str = "xla"):
  """The same computation as `reference_memory`, a `lax.scan` over chunks of b tokens.

  Inside a chunk starting from (W_0, S_0) every gradient is taken at W_0, so the per-token
  gradients u_i come in parallel, and the momentum and decay recurrences unroll to
    S_t = f_t S_0 - sum_{i<=t} theta_i E_{t,i} u_i
    W_t = c_t W_0 + d_t S_0 - sum_{i<=t} A_{t,i} u_i                      (eq. 16 with momentum)
  with E_{t,i} = prod_{i<j<=t} eta_j, f_t = prod_{j<=t} eta_j, R_{t,s} = prod_{s<j<=t} (1-alpha_j),
  c_t = prod_{j<=t} (1-alpha_j), d_t = sum_{s<=t} R_{t,s} m_s f_s and
  A_{t,i} = theta_i sum_{i<=s<=t} R_{t,s} m_s E_{s,i} (b x b matrices, `segment_products`).

  For memory layer l with input h^l_i and output-gradient delta^l_i = dl_i/dz^l_i (from
  `jax.grad` with respect to zero perturbations added to each layer's output, all at W_0),
  u^l_i = h^l_i^T delta^l_i (delta scaled by the token's clip factor), so a query's pre-activation at layer l under W^l_t is
    z W^l_t = c_t (z W^l_0) + d_t (z S^l_0) - sum_{i<=t} A_{t,i} (z . h^l_i) delta^l_i
  (TTT's dual form, applied layer by layer along the query's forward pass through M_t), and
    W^l_b = c_b W^l_0 + d_b S^l_0 - H^T (A_{b,:} * Delta),
    S^l_b = f_b S^l_0 - H^T ((theta E_{b,:}) * Delta).
  The chunk body is rematerialised (`jax.checkpoint`), so the backward pass keeps one state
  per chunk. `seq` must be a multiple of `chunk_size` (the module pads). `kernel="pallas"`
  runs each chunk as one Pallas kernel, forward and backward (`hope.fused_kernel`).
  """
  seq = q.shape[0]
  chunks = seq // chunk_size
  split = lambda x: x.reshape((chunks, chunk_size) + x.shape[1:])
  coefficients = jax.vmap(lambda *g: _chunk_coefficients(*g, use_momentum))(
      *map(split, (lr, eta, retain, write)))  # every chunk's at once, outside the scan
  inputs = (split(q), split(k), split(v), coefficients)

  one_chunk = functools.partial(_chunk, use_momentum=use_momentum, max_grad_norm=max_grad_norm)
  if kernel == "pallas":
    one_chunk = fused_kernel(one_chunk)

  def body(carry, chunk):
    w, s = carry
    y, w, s = one_chunk(w, s, *chunk)
    return (w, s), y

  (w, s), y = jax.lax.scan(jax.checkpoint(body, prevent_cse=False), (weights, momentum), inputs)
  return y.reshape((seq,) + y.shape[2:]), w, s


class NeuralMemory(nnx.Module):
  """Titans LMM mixer: x [batch, seq, dim] and a MemoryState -> y [batch, seq, dim], new state."""

  def __init__(self, dim: int, *, num_heads: int, head_dim: int = 0, depth: int = 2,
               expansion: int = 2, chunk_size: int = 16, conv_width: int = 4,
               momentum: bool = True, decay: bool = True, max_lr: float = 0.01,
               max_grad_norm: float | None = 1.0,
               implementation: str = "chunked", output_gate: bool = True,
               rule: optax.GradientTransformation | None = None, kernel: str = "xla",
               rngs: nnx.Rngs,
               dtype=jnp.float32):
    for name, value in (("dim", dim), ("num_heads", num_heads), ("depth", depth),
                        ("expansion", expansion), ("chunk_size", chunk_size),
                        ("conv_width", conv_width)):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(head_dim, int) or head_dim < 0:
      raise ValueError(f"head_dim must be a positive integer or 0 (dim // num_heads), "
                       f"got {head_dim!r}")
    if not head_dim and dim % num_heads:
      raise ValueError(f"num_heads={num_heads} does not divide dim={dim}; pass head_dim "
                       f"or choose num_heads dividing dim")
    if not max_lr > 0 or not np.isfinite(max_lr):
      raise ValueError(f"max_lr must be a positive finite number, got {max_lr!r}")
    check_clip_norm("", max_grad_norm)
    if implementation not in IMPLEMENTATIONS:
      raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    check_kernel("", kernel)
    if kernel != "xla" and implementation != "chunked":
      raise ValueError(f"kernel={kernel!r} runs the chunked form; implementation="
                       f"{implementation!r} has no kernel")
    if rule is not None and implementation != "reference":
      raise ValueError("an optax rule for the in-context update needs implementation="
                       "'reference' (the chunked form is written for Titans' own rule)")
    head_dim = head_dim or dim // num_heads
    self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
    self.chunk_size, self.max_lr, self.implementation = chunk_size, max_lr, implementation
    self.max_grad_norm, self.kernel = max_grad_norm, kernel
    self.use_momentum, self.use_decay = momentum, decay
    self.rule = rule

    heads = (num_heads, head_dim)
    project = lambda: Dense((dim,), heads, ("embed",), ("heads", "head_dim"), rngs=rngs,
                            dtype=dtype)
    self.query, self.key, self.value = project(), project(), project()
    conv = lambda: ShortConv(heads, conv_width, ("heads", "head_dim"), rngs=rngs)
    self.query_conv, self.key_conv, self.value_conv = conv(), conv(), conv()

    gate = lambda: Dense((dim,), (num_heads,), ("embed",), ("heads",), rngs=rngs, dtype=dtype)
    bias = lambda value: param(rngs, nnx.initializers.constant(value), (num_heads,), ("heads",))
    self.lr_proj, self.lr_bias = gate(), bias(LR_BIAS)
    if momentum:
      self.momentum_proj, self.momentum_bias = gate(), bias(MOMENTUM_BIAS)
    if decay:
      self.decay_proj, self.decay_bias = gate(), bias(DECAY_BIAS)

    widths = [head_dim] + [expansion * head_dim] * (depth - 1) + [head_dim]
    self.initial_weights = nnx.List([
        param(rngs, nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1),
              (num_heads, d_in, d_out), ("heads", None, None))
        for d_in, d_out in zip(widths[:-1], widths[1:])])

    self.norm = RMSNorm(head_dim, rngs=rngs, axis_name="head_dim")
    self.output_gate = Dense((dim,), heads, ("embed",), ("heads", "head_dim"), rngs=rngs,
                             dtype=dtype) if output_gate else None
    self.out = Dense(heads, (dim,), ("heads", "head_dim"), ("embed",), rngs=rngs, dtype=dtype)

  def init_state(self, batch_size: int) -> MemoryState:
    """The learned M_0 broadcast over the batch, zero momentum, zero conv caches."""
    weights = tuple(jnp.broadcast_to(w[...], (batch_size,) + w.shape) for w in self.initial_weights)
    if self.rule is None:
      momentum = tuple(jnp.zeros_like(w) for w in weights)
    else:  # the rule's state, one per (sequence, head)
      momentum = jax.vmap(jax.vmap(self.rule.init))(weights)
    return MemoryState(
        weights=weights,
        momentum=momentum,
        conv=tuple(c.empty_cache(batch_size)
                   for c in (self.query_conv, self.key_conv, self.value_conv)))

  def __call__(self, x: jax.Array, state: MemoryState | None = None,
               mask: jax.Array | None = None) -> tuple[jax.Array, MemoryState]:
    """Reads and writes the memory over x [batch, seq, dim]; mask [batch, seq] (1 = real token).

    Any seq works: the chunked path pads to a multiple of chunk_size with masked tokens.
    Returns y [batch, seq, dim] (zero at masked tokens) and the state after the last real token.
    """
    batch, seq = self._check_input(x, state)
    if state is None:
      state = self.init_state(batch)
    if mask is None:
      mask = jnp.ones((batch, seq), bool)
    elif mask.shape != (batch, seq):
      raise ValueError(f"mask must have shape {(batch, seq)} (batch, seq), got {mask.shape}")
    mask = mask.astype(bool)
    if self.implementation == "chunked":
      pad = -seq % self.chunk_size
      x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
      mask = jnp.pad(mask, ((0, 0), (0, pad)))

    q, k, v, conv = self._keys_values_queries(x, state.conv, mask)
    gates = self.gates(x, mask)
    if self.implementation == "chunked":
      core = functools.partial(chunked_memory, kernel=self.kernel)
    else:
      core = functools.partial(reference_memory, rule=self.rule)
    run = lambda *a: core(*a, chunk_size=self.chunk_size, use_momentum=self.use_momentum,
                          max_grad_norm=self.max_grad_norm)
    heads_first = lambda a: jnp.moveaxis(a, 2, 1)
    y, weights, momentum = jax.vmap(jax.vmap(run))(
        state.weights, state.momentum, *map(heads_first, (q, k, v) + gates))
    y = self._output(x, heads_first(y)) * mask[..., None]
    return y[:, :seq], MemoryState(weights=weights, momentum=momentum, conv=conv)

  def init_cache(self, batch_size: int, max_len: int) -> DecodeState:
    """The decoding state at the start of a document (any length: `max_len` is unused)."""
    del max_len
    state = self.init_state(batch_size)
    return DecodeState(memory=state, chunk_start=state.weights, clock=jnp.zeros((), jnp.int32))

  def decode(self, x: jax.Array, cache: DecodeState) -> tuple[jax.Array, DecodeState]:
    """`__call__` on the next tokens x [batch, t, dim] of the document in `cache`, token by
    token (`memory_recurrence`): a call may end inside a chunk, and the next one goes on
    with that chunk's start weights, so calls of any lengths equal one call."""
    batch, seq = self._check_input(x, cache.memory)
    mask = jnp.ones((batch, seq), bool)
    q, k, v, conv = self._keys_values_queries(x, cache.memory.conv, mask)
    run = lambda w, s, w0, *a: memory_recurrence(
        w, s, w0, cache.clock, *a, chunk_size=self.chunk_size, max_grad_norm=self.max_grad_norm,
        rule=self.rule)
    heads_first = lambda a: jnp.moveaxis(a, 2, 1)
    y, weights, momentum, chunk_start = jax.vmap(jax.vmap(run))(
        cache.memory.weights, cache.memory.momentum, cache.chunk_start,
        *map(heads_first, (q, k, v) + self.gates(x, mask)))
    if not (self.use_momentum or self.rule is not None):
      momentum = cache.memory.momentum
    memory = MemoryState(weights=weights, momentum=momentum, conv=conv)
    return (self._output(x, heads_first(y)),
            DecodeState(memory=memory, chunk_start=chunk_start,
                        clock=(cache.clock + seq) % self.chunk_size))

  def retrieve(self, x: jax.Array, state: MemoryState) -> jax.Array:
    """Read-only: y_t = M_state(q_t) for every token (eq. 15), no write; state is not advanced.

    The query's short convolution starts from state's query cache.
    """
    self._check_input(x, state)
    return self.read(x, state.weights, state.conv[0])[0]

  def associative_loss(self, x: jax.Array, state: MemoryState) -> jax.Array:
    """Read-only: l(M_state; k_t, v_t) = ||M_state(k_t) - v_t||^2 (eq. 12) for every token of
    x [batch, seq, dim] and head, [batch, seq, heads]: how well state's weights already map
    x's keys to its values. Keys and values are formed as in `__call__`, their short
    convolutions starting from state's caches; state is not advanced."""
    return self._per_token(x, state, memory_loss)

  def inner_gradient_norm(self, x: jax.Array, state: MemoryState) -> jax.Array:
    """Read-only: ||grad l(M_state; k_t, v_t)||, each token's inner gradient before the clip
    (its global norm over the memory layers) through state's weights, [batch, seq, heads].
    For the tokens of a chunk that starts where `state` was taken, the write clips exactly
    where this exceeds max_grad_norm. Keys and values as in `associative_loss`."""
    def norm(weights, k, v):
      return jnp.sqrt(sum(jnp.sum(g * g) for g in jax.grad(memory_loss)(weights, k, v)))
    return self._per_token(x, state, norm)

  def _per_token(self, x: jax.Array, state: MemoryState, fn) -> jax.Array:
    """fn(weights, k_t, v_t) for every token and head of x through state's weights, [batch,
    seq, heads]; the keys and values as in `__call__`, from state's convolution caches."""
    self._check_input(x, state)
    _, k, v, _ = self._keys_values_queries(x, state.conv, jnp.ones(x.shape[:2], bool))
    heads_first = lambda a: jnp.moveaxis(a, 2, 1)
    over_tokens = jax.vmap(fn, in_axes=(None, 0, 0))
    return jnp.moveaxis(jax.vmap(jax.vmap(over_tokens))(
        state.weights, heads_first(k), heads_first(v)), 1, 2)

  def read(self, x: jax.Array, weights, query_cache: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`retrieve` through memory `weights` with the query convolution's cache given:
    (y, the cache after x)."""
    q, query_cache = self.query_conv(self.query(x), query_cache,
                                     jnp.ones(x.shape[:2], bool))
    q = l2_normalize(jax.nn.silu(q))
    y = jax.vmap(jax.vmap(memory_mlp))(weights, jnp.moveaxis(q, 2, 1))
    return self._output(x, jnp.moveaxis(y, 1, 2)), query_cache

  def flops_per_token(self, seq_len: int) -> float:
    """Forward model FLOPs per token of the chunked form (matmuls; elementwise work ignored).

    Projections (q, k, v, gate, output, gates, convs) plus, per head: the keys' forward pass
    and deltas at W_0 (2P + 2(P - P_1), P = memory parameters per head, P_1 its first layer),
    the query read-out through W_0 (and S_0 with momentum) plus the causal dual-form terms
    over (b+1)/2 earlier chunk tokens, the chunk-end W (and S) as H^T Delta (2P each), and
    the b x b x b product behind A (with momentum).
    """
    b = min(self.chunk_size, max(seq_len, 1))
    heads, hd, dim = self.num_heads, self.head_dim, self.dim
    shapes = [w.shape[1:] for w in self.initial_weights]
    p = sum(d_in * d_out for d_in, d_out in shapes)
    states = 2 if self.use_momentum else 1
    n_gates = 1 + self.use_momentum + self.use_decay
    projections = 2 * dim * heads * hd * (4 + (self.output_gate is not None))
    projections += 2 * dim * heads * n_gates + 3 * 2 * self.query_conv.width * heads * hd
    dual = 2 * (b + 1) / 2 * sum(d_in + d_out for d_in, d_out in shapes)
    keys = 2 * p + 2 * (p - shapes[0][0] * shapes[0][1])
    coefficients = 2 * b * b if self.use_momentum else 0
    memory = keys + states * 2 * p + dual + states * 2 * p + coefficients
    return float(projections + heads * memory)

  def _check_input(self, x: jax.Array, state: MemoryState | None) -> tuple[int, int]:
    if x.ndim != 3 or x.shape[-1] != self.dim:
      raise ValueError(f"x must have shape [batch, seq, {self.dim}], got {x.shape}")
    batch, seq = x.shape[:2]
    if state is not None:
      want = (batch,) + self.initial_weights[0].shape
      if state.weights[0].shape != want:
        raise ValueError(f"state.weights[0] has shape {state.weights[0].shape}, expected {want} "
                         f"for a batch of {batch}; build it with init_state({batch})")
    return batch, seq

  def _keys_values_queries(self, x, caches, mask):
    """q, k, v [batch, seq, heads, head_dim] after projection, short conv and SiLU (§4.4)."""
    q, cache_q = self.query_conv(self.query(x), caches[0], mask)
    k, cache_k = self.key_conv(self.key(x), caches[1], mask)
    v, cache_v = self.value_conv(self.value(x), caches[2], mask)
    q, k, v = jax.nn.silu(q), jax.nn.silu(k), jax.nn.silu(v)
    return l2_normalize(q), l2_normalize(k), v, (cache_q, cache_k, cache_v)

  def gates(self, x, mask):
    """(theta, eta, 1 - alpha, m) [batch, seq, heads], with masked tokens made no-ops."""
    logits = lambda proj, bias: proj(x).astype(jnp.float32) + bias[...]
    lr = self.max_lr * jax.nn.sigmoid(logits(self.lr_proj, self.lr_bias))
    lr = jnp.where(mask[..., None], lr, 0.0)
    if self.use_momentum:
      eta = jax.nn.sigmoid(logits(self.momentum_proj, self.momentum_bias))
      eta = jnp.where(mask[..., None], eta, 1.0)
    else:
      eta = jnp.zeros_like(lr)
    if self.use_decay:
      retain = jax.nn.sigmoid(-logits(self.decay_proj, self.decay_bias))  # 1 - alpha, exactly
      retain = jnp.where(mask[..., None], retain, 1.0)
    else:
      retain = jnp.ones_like(lr)
    write = jnp.broadcast_to(mask[..., None], lr.shape).astype(jnp.float32)
    return lr, eta, retain, write

  def _output(self, x, y):
    """Per-head RMSNorm, SiLU(x W_g) gate (§4.4), projection to dim; y [b, t, heads, head_dim]."""
    y = self.norm(y)
    if self.output_gate is not None:
      y = y * jax.nn.silu(self.output_gate(x).astype(jnp.float32))
    return self.out(y)


def check_state_finite(state: MemoryState) -> MemoryState:
  """Raises FloatingPointError naming the memory quantity that holds NaN or inf; else returns state.

  Call it on a state returned from jit (it reads the values on the host), e.g. after a
  training or evaluation step. A blow-up of the inner update usually means max_lr is too
  large for the inputs, or the inputs themselves were not finite.
  """
  depth = len(state.weights)
  layer = lambda i: f"(memory layer {i + 1} of {depth})"
  named = [(f"weights[{i}] {layer(i)}", w) for i, w in enumerate(state.weights)]
  momentum = jax.tree.leaves(state.momentum)
  if isinstance(state.momentum, tuple) and len(state.momentum) == depth == len(momentum):
    named += [(f"momentum[{i}] {layer(i)}", s) for i, s in enumerate(momentum)]
  else:  # an optax rule's state
    named += [(f"inner rule state leaf {i}", s) for i, s in enumerate(momentum)]
  named += [(f"conv cache of {n}", c) for n, c in zip("qkv", state.conv)]
  found = first_nonfinite(named)
  if found:
    name, value = found
    rows = np.nonzero(~np.isfinite(value.reshape(value.shape[0], -1)).all(axis=1))[0].tolist()
    raise FloatingPointError(
          f"neural memory state is not finite: {name} has {int(np.isnan(value).sum())} NaN and "
          f"{int(np.isinf(value).sum())} inf entries, in batch rows {rows}; check the inputs "
          f"for NaN/inf, or lower max_lr")
  return state
