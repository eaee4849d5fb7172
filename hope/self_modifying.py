"""Self-modifying Titans, HOPE's sequence mixer (Nested Learning, arXiv sec. 8, eqs. 83-93).

Five in-context memories per head, each a 2-layer residual MLP (eqs. 89/91)

    M(z) = z + W_1 silu(W_2 z),      W_2: [d, d] (input side), W_1: [d, d] (output side),

whose weights are state. For token x_t (the block's input after a causal depthwise
convolution of width 4, split into heads of d channels and L2-normalised per head):

    k_t = l2norm(M_k(x_t)),  v_t = M_v(x_t)                                  (eqs. 83-84)
    eta_t = sigmoid(mean(M_eta(x_t)) + b_eta),  alpha_t = sigmoid(mean(M_alpha(x_t)) + b_alpha)
    q_t = l2norm(conv(x_t W_q))       the only non-adaptive projection
    o_t = M_memory(q_t);  y_t = [o_t over heads] W_o                           (eq. 94)

and every memory M_box, box in {k, v, eta, alpha, memory}, generates its own target and
takes one Delta Gradient Descent step with decay (eq. 88) on

    l_box = 1/2 || M_box(k_t) - v^_box,t ||^2,      v^_box,t = M_box(v_t)      (eqs. 85-87).

Every memory input (x, k, q) has unit norm, and so, at the learned initial weights, have
v and the targets. Without the normalisation of x, v and the targets are sqrt(d) times
larger than the unit keys and the self-generated targets feed a runaway (with chunk size 1,
d = 8 and random inputs the weights overflowed after 30 tokens).

The target is held fixed in the inner gradient (it is not differentiated with respect to
the weights being updated, the usual stop-gradient on a self-generated target); the outer
loop does differentiate through it. eta_t and alpha_t are scalars per token and head: the
mean over channels reads the memory's output, and the squashing keeps eta in (0, 1) and
alpha in (0, 1), so with unit keys alpha I - eta k k^T has no eigenvalue outside [-1, 1].

DGD on an MLP memory, per weight matrix. Eq. 88 is stated for a matrix memory with key k_t;
here each matrix W of the MLP takes the DGD step with its own input x as the key, normalised
(x^ = x / sqrt(|x|^2 + 1e-6), so ||x^|| <= 1):

    W <- W (alpha_t I - eta_t x^ x^^T) - eta_t dl/dW,     dl/dW = u x^T,

with (x, u) = (k_t, W_1^T e * silu'(W_2 k_t)) for W_2 and (silu(W_2 k_t), e) for W_1,
e = M(k_t) - v^_t. Each matrix thus forgets along the direction of its current input, as a
matrix memory does along its key.

Inner rule and decay (`inner_rule`, `inner_decay`; the ablations of arXiv Table 6).
`inner_rule="gd"` drops the x^ x^^T term: plain gradient descent with the same decay,

    W <- alpha_t W - eta_t dl/dW,

and `inner_decay=False` fixes alpha_t = 1 (no forgetting) under either rule; M_alpha and
b_alpha then have no effect (their outer gradients are zero), and the bound on the weights
that the clip gives (below) no longer holds. The defaults ("dgd", True) are eq. 88 as above.

Inner-gradient clip. Each token's gradient of a memory is clipped to a global norm (over
W_1 and W_2) of at most `max_grad_norm`, as in `hope.neural_memory`. With unit keys the
forgetting factor alpha I - eta x^ x^^T has spectral norm below 1, so clipped gradients keep
every weight norm below eta * max_grad_norm / (1 - max(alpha, |alpha - eta|)). Unclipped,
the gradient step on W_1 scales with |silu(W_2 k)|^2 and W_2's with |W_1|^2: once the
weights grow, the step overshoots and they overflow (a trained HOPE-tiny's M_k..M_alpha
reached 1e18 within 128 tokens on 12 of 32 validation batches). The factor of each token
is min(1, max_grad_norm / sqrt(sum over matrices |u|^2 |x|^2)) (||u x^T|| = |u| |x|), so the
clip is exact in the chunk-wise form.

Chunk-wise training (sec. 8.2). Two chunk sizes: C_memory for M_memory and C_other shared by
M_k, M_v, M_eta and M_alpha. Within a chunk every quantity a memory produces (k, v, eta,
alpha, targets, gradients, the output) comes from its weights at the last chunk boundary
before t; eq. 90 as printed indexes the chunk end, which is not causal. With chunk size 1
this is the per-token recurrence o_t = M_memory,t-1(q_t). Since the gradients come from the
boundary weights, the DGD recurrence over a chunk is linear in W,
W_t = W_{t-1} (alpha_t I - eta_t x^_t x^_t^T) + b_t x^_t^T with b_t = -eta_t |x_t| u_t (a
gated delta rule), and is applied in closed form (`dgd_chunk`): one C x C unit-triangular system per
chunk, head and matrix, no loop over tokens; without the x^ x^^T term it is a decay-weighted
sum (`gd_chunk`). `lax.scan` runs over chunks, the other memories first (they do not depend
on M_memory), then M_memory on its own grid.

Streaming is exact for pieces of any length: the state keeps each memory's boundary weights
and running weights, the position in the current chunk of each grid and the convolutions'
caches; masked tokens are skipped as if absent (`hope.stream_chunks`). Outputs at masked
positions are zero. A layer built with `piece` = g > 1 reads only calls of a multiple of g
tokens without a mask (a model taught by the next-token loss reads pieces of P tokens,
`hope.lm`): its clocks then stay at multiples of gcd(g, C), and a call of g tokens takes
ceil(g / C) chunk steps where g divides C or C divides g, not one more. The memories run in
float32 whatever `dtype` the projections use.
`reference_self_modifying` (hope/self_modifying_reference.py) is the same computation token
by token, with `jax.grad` and the matrix form of eq. 88.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from hope.fused_kernel import check_kernel, fused_kernel
from hope.layers import Dense, first_nonfinite, l2_normalize, param, silu_grad
from hope.matmul import matmul, transpose
from hope.neural_memory import check_clip_norm, clip_scale
from hope.short_conv import ShortConv
from hope.stream_chunks import chunk_grid, compact, compaction, from_chunks, to_chunks, uncompact

OTHER_MEMORIES = ("M_k", "M_v", "M_eta", "M_alpha")   # stacking order on the C_other grid
INNER_RULES = ("dgd", "gd")
NORM_EPS = 1e-6
# Initial eta and alpha (through the biases b_eta, b_alpha): a retention of 0.999 per token
# keeps the weights for about a thousand tokens; lower values decay the memories towards
# zero, where the residual MLP's gradient vanishes, before they learn anything.
ETA_INIT, ALPHA_INIT = 0.1, 0.999


@struct.dataclass
class SelfModifyingState:
  """Per-sequence state, each array with a leading batch axis.

  other_boundary, other_running: {"w1", "w2"} of [4, heads, d, d], M_k, M_v, M_eta, M_alpha
    in that order: the weights at the last C_other boundary (used by every token of the
    current chunk) and after the latest token (they become the boundary at the chunk end).
  memory_boundary, memory_running: {"w1", "w2"} of [heads, d, d], M_memory on the C_memory grid.
  other_position, memory_position (int32): tokens of each grid's unfinished chunk consumed.
  conv_x [w-1, dim], conv_q [w-1, heads, d]: the short convolutions' caches.
  """
  other_boundary: dict
  other_running: dict
  memory_boundary: dict
  memory_running: dict
  other_position: jax.Array
  memory_position: jax.Array
  conv_x: jax.Array
  conv_q: jax.Array


def per_head(m: jax.Array, z: jax.Array) -> jax.Array:
  """m[h] z[..., h, :] for every head h: m [heads, r, c], z [..., heads, c] -> [..., heads, r],
  as one `matmul` batched over heads."""
  heads, c = z.shape[-2:]
  y = matmul(jnp.moveaxis(z, -2, 0).reshape(heads, -1, c), transpose(m))
  return jnp.moveaxis(y.reshape((heads,) + z.shape[:-2] + (m.shape[1],)), 0, -2)


def memory_apply(w: dict, z: jax.Array) -> jax.Array:
  """M(z) = z + W_1 silu(W_2 z) per head (eq. 89): w1, w2 [heads, d, d]; z [..., heads, d]."""
  return z + per_head(w["w1"], jax.nn.silu(per_head(w["w2"], z)))


def gradient_factors(w: dict, key: jax.Array, target: jax.Array) -> dict:
  """dl/dW = u x^T for l = 1/2 ||M(key) - target||^2 at weights w, as (u, x) per matrix:
  W_1: (e, silu(W_2 key)), W_2: (W_1^T e * silu'(W_2 key), key), e = M(key) - target."""
  pre = per_head(w["w2"], key)
  hidden = jax.nn.silu(pre)
  err = key + per_head(w["w1"], hidden) - target
  delta = per_head(transpose(w["w1"]), err) * silu_grad(pre)
  return {"w1": (err, hidden), "w2": (delta, key)}


def squared_norm(factors: dict) -> jax.Array:
  """Each token's squared global norm of the gradient u x^T given as `gradient_factors`,
  sum over matrices of |u|^2 |x|^2, [..., heads]."""
  return sum(jnp.sum(u * u, -1) * jnp.sum(x * x, -1) for u, x in factors.values())


def dgd_chunk(weight: jax.Array, u: jax.Array, x: jax.Array, eta: jax.Array,
              log_alpha: jax.Array) -> jax.Array:
  """W_t = W_{t-1} (alpha_t I - eta_t x^_t x^_t^T) - eta_t u_t x_t^T over one chunk, closed form.

  weight [r, c]; u [n, r]; x [n, c]; eta, log_alpha [n] (eta = 0, log_alpha = 0 make a
  token an identity step). With x_t = s_t x^_t, b_t = -eta_t s_t u_t and
  gamma_t = alpha_1 ... alpha_t, the end state is

      W_n = gamma_n W_0 + sum_t (gamma_n / gamma_t) U_t x^_t^T,
      U_t + eta_t sum_{i<t} (gamma_{t-1} / gamma_i) (x^_t . x^_i) U_i
          = b_t - eta_t gamma_{t-1} W_0 x^_t,

  (the chunkwise gated delta rule: substitute W_t = gamma_t (W_0 + sum_{i<=t} U_i x^_i^T / gamma_i)
  into the recurrence). Every decay ratio has exponent <= 0, so nothing overflows.
  """
  scale = jnp.sqrt(jnp.sum(x * x, axis=-1) + NORM_EPS)
  keys = x / scale[:, None]
  b = -(eta * scale)[:, None] * u
  log_gamma = jnp.cumsum(log_alpha)
  log_gamma_prev = log_gamma - log_alpha
  n = x.shape[0]
  earlier = jnp.arange(n)[:, None] > jnp.arange(n)[None, :]
  ratio = jnp.where(earlier, jnp.exp(jnp.where(earlier, log_gamma_prev[:, None] - log_gamma, 0.0)),
                    0.0)
  coupling = eta[:, None] * ratio * matmul(keys, transpose(keys))   # strictly lower
  rhs = b - (eta * jnp.exp(log_gamma_prev))[:, None] * matmul(keys, transpose(weight))
  corrections = matmul(unit_lower_inverse(coupling), rhs)
  tail = jnp.exp(log_gamma[-1] - log_gamma)
  return jnp.exp(log_gamma[-1]) * weight + matmul(transpose(corrections * tail[:, None]), keys)


def gd_chunk(weight: jax.Array, u: jax.Array, x: jax.Array, eta: jax.Array,
             log_alpha: jax.Array) -> jax.Array:
  """W_t = alpha_t W_{t-1} - eta_t u_t x_t^T over one chunk, closed form (shapes as `dgd_chunk`):

      W_n = gamma_n W_0 - sum_t (gamma_n / gamma_t) eta_t u_t x_t^T,  gamma_t = alpha_1...alpha_t.
  """
  log_gamma = jnp.cumsum(log_alpha)
  tail = eta * jnp.exp(log_gamma[-1] - log_gamma)
  return jnp.exp(log_gamma[-1]) * weight - matmul(transpose(u * tail[:, None]), x)


def unit_lower_inverse(strict: jax.Array) -> jax.Array:
  """(I + L)^-1 for a strictly lower-triangular L [n, n], with matmuls only.

  L is nilpotent (L^n = 0), so (I + L)^-1 = sum_{j<n} (-L)^j = (I - L)(I + L^2)(I + L^4)...,
  ceil(log2 n) factors, all matmuls, which map onto matrix units. (A HOPE layer compiled
  with `jax.scipy.linalg.solve_triangular` instead hung at run time on jax 0.10.2 CPU.)
  """
  power = -strict
  inverse = jnp.eye(strict.shape[0]) + power
  for _ in range(1, max(1, (strict.shape[0] - 1).bit_length())):
    power = matmul(power, power)
    inverse = inverse + matmul(inverse, power)
  return inverse


def inner_update(boundary: dict, running: dict, key, target, eta, log_alpha, *,
                 max_grad_norm: float | None, rule: str, kernel: str = "xla") -> dict:
  """One memory's running weights after a chunk: gradients at the boundary weights (eq. 91),
  each token's clipped to a global norm of max_grad_norm, then the recurrence of `rule` (DGD,
  eq. 88, or plain gradient descent) from the running weights. key, target [n, heads, d];
  eta, log_alpha [n, heads]. kernel="pallas": the same as one Pallas kernel."""
  if kernel == "pallas":
    update = functools.partial(inner_update, max_grad_norm=max_grad_norm, rule=rule)
    return fused_kernel(update)(boundary, running, key, target, eta, log_alpha)
  factors = gradient_factors(boundary, key, target)
  scale = clip_scale(squared_norm(factors), max_grad_norm)[..., None]
  factors = {name: (scale * u, x) for name, (u, x) in factors.items()}
  per_head = jax.vmap(dgd_chunk if rule == "dgd" else gd_chunk, in_axes=(0, 1, 1, 1, 1))
  return {name: per_head(running[name], *factors[name], eta, log_alpha) for name in running}


def check_inner_rule(owner: str, inner_rule, inner_decay) -> None:
  """ValueError unless inner_rule is one of INNER_RULES and inner_decay a bool."""
  if not isinstance(inner_rule, str) or inner_rule not in INNER_RULES:
    raise ValueError(f"{owner}inner_rule must be 'dgd' (Delta Gradient Descent) or 'gd' "
                     f"(gradient descent), got {inner_rule!r}")
  if not isinstance(inner_decay, (bool, np.bool_)):
    raise ValueError(f"{owner}inner_decay must be True or False (False fixes alpha_t = 1), "
                     f"got {inner_decay!r}")


class SelfModifyingMemory(nnx.Module):
  """Maps x [batch, seq, dim] to [batch, seq, dim] with self-modifying Titans memories.

  Args:
    dim: width of the input and output; split into `num_heads` heads of `head_dim` channels
      for the memories, so num_heads * head_dim must equal dim.
    num_heads: heads, each with its own five memories.
    head_dim: channels per head; 0 means dim // num_heads.
    chunk_size_memory: chunk size of M_memory (its weights change every this many tokens).
    chunk_size_other: chunk size shared by M_k, M_v, M_eta and M_alpha.
    conv_width: width of the causal depthwise convolutions on x and on q.
    max_grad_norm: each token's inner gradient of a memory is clipped to this global norm
      (None: no clip); see the module docstring.
    inner_rule: every memory's inner optimizer: "dgd" (Delta Gradient Descent, eq. 88) or
      "gd" (gradient descent with the same decay, W <- alpha_t W - eta_t dl/dW).
    inner_decay: False fixes alpha_t = 1 (no forgetting) in the inner rule.
    piece: every call's length must be a multiple of this, with no mask; a promise that
      saves chunk steps (module docstring). 1: calls of any length.
    kernel: "xla", or "pallas" to run each memory's chunk update (gradients, clip and the
      closed-form DGD or GD step) as one Pallas kernel, forward and backward
      (`hope.fused_kernel`).
    dtype: dtype of the q and output projections; the memories run in float32.
  """

  def __init__(self, dim: int, *, num_heads: int, head_dim: int = 0,
               chunk_size_memory: int = 16, chunk_size_other: int = 16, conv_width: int = 4,
               max_grad_norm: float | None = 1.0, inner_rule: str = "dgd",
               inner_decay: bool = True, piece: int = 1, kernel: str = "xla", rngs: nnx.Rngs,
               dtype=jnp.float32):
    for name, value in (("dim", dim), ("num_heads", num_heads),
                        ("chunk_size_memory", chunk_size_memory),
                        ("chunk_size_other", chunk_size_other), ("conv_width", conv_width),
                        ("piece", piece)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"SelfModifyingMemory {name} must be a positive integer, got {value!r}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)) or head_dim < 0:
      raise ValueError(f"SelfModifyingMemory head_dim must be >= 0 (0 = dim // num_heads), "
                       f"got {head_dim!r}")
    if not head_dim:
      if dim % num_heads:
        raise ValueError(f"SelfModifyingMemory num_heads ({num_heads}) must divide dim ({dim}) "
                         "when head_dim is 0")
      head_dim = dim // num_heads
    if num_heads * head_dim != dim:
      raise ValueError(f"SelfModifyingMemory num_heads * head_dim ({num_heads} * {head_dim}) "
                       f"must equal dim ({dim}): the memories read x split into heads")
    check_clip_norm("SelfModifyingMemory ", max_grad_norm)
    check_inner_rule("SelfModifyingMemory ", inner_rule, inner_decay)
    check_kernel("SelfModifyingMemory ", kernel)
    self.max_grad_norm, self.kernel = max_grad_norm, kernel
    self.inner_rule, self.inner_decay = inner_rule, bool(inner_decay)
    self.piece = int(piece)
    self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
    self.chunk_size_memory, self.chunk_size_other = int(chunk_size_memory), int(chunk_size_other)
    self.dtype = dtype
    heads = (num_heads, head_dim)
    self.query = Dense((dim,), heads, ("embed",), ("heads", "head_dim"), rngs=rngs, dtype=dtype)
    self.out = Dense(heads, (dim,), ("heads", "head_dim"), ("embed",), rngs=rngs, dtype=dtype)
    self.conv_x = ShortConv((dim,), conv_width, ("embed",), rngs=rngs)
    self.conv_q = ShortConv(heads, conv_width, ("heads", "head_dim"), rngs=rngs)
    init = lambda key, shape, dt: head_dim ** -0.5 * jax.random.truncated_normal(
        key, -2.0, 2.0, shape, dt)
    w1_axes, w2_axes = ("heads", "head_dim", None), ("heads", None, "head_dim")
    others = (len(OTHER_MEMORIES),)
    self.other_w1 = param(rngs, init, others + heads + (head_dim,), (None,) + w1_axes)
    self.other_w2 = param(rngs, init, others + (num_heads, head_dim, head_dim), (None,) + w2_axes)
    self.memory_w1 = param(rngs, init, heads + (head_dim,), w1_axes)
    self.memory_w2 = param(rngs, init, heads + (head_dim,), w2_axes)
    logit = lambda p: float(np.log(p / (1 - p)))
    self.eta_bias = param(rngs, nnx.initializers.constant(logit(ETA_INIT)), (num_heads,),
                          ("heads",))
    self.alpha_bias = param(rngs, nnx.initializers.constant(logit(ALPHA_INIT)), (num_heads,),
                            ("heads",))

  def init_state(self, batch_size: int) -> SelfModifyingState:
    """All memories at their learned initial weights, both clocks at 0, empty conv caches."""
    tile = lambda w: jnp.broadcast_to(w[...], (batch_size,) + w.shape)
    other = {"w1": tile(self.other_w1), "w2": tile(self.other_w2)}
    memory = {"w1": tile(self.memory_w1), "w2": tile(self.memory_w2)}
    zero = jnp.zeros((batch_size,), jnp.int32)
    return SelfModifyingState(other_boundary=other, other_running=other, memory_boundary=memory,
                              memory_running=memory, other_position=zero, memory_position=zero,
                              conv_x=self.conv_x.empty_cache(batch_size),
                              conv_q=self.conv_q.empty_cache(batch_size))

  def __call__(self, x: jax.Array, state: SelfModifyingState | None = None,
               mask: jax.Array | None = None) -> tuple[jax.Array, SelfModifyingState]:
    """x [batch, seq, dim] -> (y [batch, seq, dim], the state after the call).

    `mask` [batch, seq] (nonzero = real token): masked tokens are skipped as if absent and
    get zero output.
    """
    y, state, _ = self._run(x, state, mask, record=False)
    return y, state

  def inner_statistics(self, x: jax.Array, state: SelfModifyingState | None = None) -> dict:
    """Read-only: what the inner rule does at each token of x [batch, seq, dim] (every token
    real), streamed from `state` (None: a fresh one), as arrays [batch, seq, heads]:

      eta: eta_t, the step size every memory of the head takes at the token;
      alpha: alpha_t, its retention (1 with inner_decay=False);
      gradient_norm: [batch, seq, 5, heads], each memory's inner gradient norm before the
        clip, M_k, M_v, M_eta, M_alpha, M_memory in that order (the clip binds where it
        exceeds max_grad_norm);
      memory_key, memory_target: [batch, seq, heads, d], the pair M_memory is written with
        at the token, k_t and its target M_memory(v_t) (both at its boundary weights), so
        ||M(memory_key) - memory_target||^2 under other weights M says how well they
        already map the pairs x writes.
    """
    _, _, out = self._run(x, state, None, record=True)
    return out

  def _run(self, x, state, mask, record: bool):
    """(y, the state after x, the `inner_statistics` if `record` else None)."""
    chex.assert_rank(x, 3)
    batch, seq, dim = x.shape
    if dim != self.dim:
      raise ValueError(f"SelfModifyingMemory expects inputs of width {self.dim}, got {dim}")
    if self.piece > 1 and (seq % self.piece or mask is not None):
      raise ValueError(f"SelfModifyingMemory built with piece={self.piece} reads multiples of "
                       f"{self.piece} tokens without a mask, got {seq} tokens"
                       + (" and a mask" if mask is not None else ""))
    fresh = state is None
    state = self.init_state(batch) if fresh else state
    mask = jnp.ones((batch, seq), bool) if mask is None else mask.astype(bool)
    chex.assert_shape(mask, (batch, seq))
    comp = jax.vmap(compaction)(mask)
    xc = jax.vmap(compact)(x, comp)
    valid = jnp.arange(seq) < comp.count[:, None]
    xm, conv_x = self.conv_x(xc, state.conv_x, valid)
    q, conv_q = self.conv_q(self.query(xc), state.conv_q, valid)
    heads = (self.num_heads, self.head_dim)
    o, memories, recorded = jax.vmap(functools.partial(
        self._one_sequence, at_boundary=fresh, record=record))(
        l2_normalize(xm.reshape((batch, seq) + heads), NORM_EPS), l2_normalize(q, NORM_EPS),
        comp.count, state)
    y = jax.vmap(uncompact)(self.out(o.astype(self.dtype)), comp)
    return y, SelfModifyingState(**memories, conv_x=conv_x, conv_q=conv_q), recorded

  def _one_sequence(self, x, q, count, state, at_boundary: bool, record: bool):
    """The memories over one compacted sequence: x, q [seq, heads, d] -> o [seq, heads, d];
    `at_boundary`: the state is fresh (both clocks at 0); `record`: also return eta, alpha
    and the gradient norms per token (`inner_statistics`), else None."""
    seq = x.shape[0]
    eta_bias, alpha_bias = self.eta_bias[...], self.alpha_bias[...]
    apply_each = jax.vmap(memory_apply, in_axes=(0, None))
    update = functools.partial(inner_update, max_grad_norm=self.max_grad_norm,
                               rule=self.inner_rule, kernel=self.kernel)
    update_each = jax.vmap(update, in_axes=(0, 0, None, 0, None, None))

    def other_step(carry, chunk):
      boundary, running = carry
      xs, valid, complete = chunk
      out = apply_each(boundary, xs)                                  # [4, n, heads, d]
      k, v = l2_normalize(out[0], NORM_EPS), out[1]
      eta = jax.nn.sigmoid(jnp.mean(out[2], -1) + eta_bias) * valid[:, None]
      log_alpha = (jax.nn.log_sigmoid(jnp.mean(out[3], -1) + alpha_bias) * valid[:, None]
                   if self.inner_decay else jnp.zeros_like(eta))
      targets = apply_each(boundary, v)
      running = update_each(boundary, running, k, targets, eta, log_alpha)
      norms = (jnp.moveaxis(jnp.sqrt(jax.vmap(squared_norm)(
          jax.vmap(gradient_factors, in_axes=(0, None, 0))(boundary, k, targets))), 0, 1)
          if record else None)                                        # [n, 4, heads]
      return ((optax.tree_utils.tree_where(complete, running, boundary), running),
              (k, v, eta, log_alpha, norms))

    def memory_step(carry, chunk):
      boundary, running = carry
      q, k, v, eta, log_alpha, complete = chunk                       # zero at empty slots
      target = memory_apply(boundary, v)
      running = update(boundary, running, k, target, eta, log_alpha)
      norm = (jnp.sqrt(squared_norm(gradient_factors(boundary, k, target))) if record
              else None)                                              # [n, heads]
      return ((optax.tree_utils.tree_where(complete, running, boundary), running),
              (memory_apply(boundary, q), norm, target if record else None))

    grid = chunk_grid(count, state.other_position, self.chunk_size_other, seq,
                      at_boundary=at_boundary, granule=self.piece)
    (other_boundary, other_running), generated = jax.lax.scan(
        jax.checkpoint(other_step), (state.other_boundary, state.other_running),
        (to_chunks(x, grid), grid.valid, grid.complete))
    k, v, eta, log_alpha = (from_chunks(a, grid) for a in generated[:4])
    memory_grid = chunk_grid(count, state.memory_position, self.chunk_size_memory, seq,
                             at_boundary=at_boundary, granule=self.piece)
    (memory_boundary, memory_running), (o, memory_norm, memory_target) = jax.lax.scan(
        jax.checkpoint(memory_step), (state.memory_boundary, state.memory_running),
        tuple(to_chunks(a, memory_grid) for a in (q, k, v, eta, log_alpha))
        + (memory_grid.complete,))
    recorded = dict(eta=eta, alpha=jnp.exp(log_alpha), gradient_norm=jnp.concatenate(
        [from_chunks(generated[4], grid), from_chunks(memory_norm, memory_grid)[:, None]], 1),
        memory_key=k, memory_target=from_chunks(memory_target, memory_grid)) if record else None
    return from_chunks(o, memory_grid), dict(
        other_boundary=other_boundary, other_running=other_running,
        memory_boundary=memory_boundary, memory_running=memory_running,
        other_position=grid.next_position, memory_position=memory_grid.next_position), recorded

  def flops_per_token(self, seq_len: int) -> float:
    """Forward matmul FLOPs per token.

    Per head, a memory forward is 4 d^2; each of the four other memories reads x, its
    target M(v) and its gradient (forward on k plus W_1^T e: 6 d^2); M_memory reads q, its
    target and its gradient. The closed-form DGD costs per matrix and token 4 d^2 (W x^ and
    the rank-n update), 4 n d (Gram matrix, inverse times right-hand side) and
    4 n^2 ceil(log2 n) (`unit_lower_inverse`), n = min(chunk, seq_len); plain gradient
    descent only the rank-n update, 2 d^2. Plus the q and output projections and the two
    convolutions.
    """
    d, heads = self.head_dim, self.num_heads
    n_other = min(self.chunk_size_other, seq_len)
    n_memory = min(self.chunk_size_memory, seq_len)
    inverse = lambda n: 4 * n * n * (n - 1).bit_length()
    rule = ((lambda n: 2 * (4 * d * d + 4 * n * d + inverse(n))) if self.inner_rule == "dgd"
            else (lambda n: 2 * 2 * d * d))                          # two matrices
    other = 4 * (4 * d * d + 4 * d * d + 6 * d * d + rule(n_other))
    memory = 4 * d * d + 4 * d * d + 6 * d * d + rule(n_memory)
    projections = 2 * 2 * self.dim * heads * d
    convs = 2 * self.conv_x.width * (self.dim + heads * d)
    return heads * (other + memory) + projections + convs


def check_finite(state: SelfModifyingState) -> None:
  """Raises FloatingPointError naming the first memory (M_k, M_v, M_eta, M_alpha, M_memory)
  or conv cache whose in-context state holds a NaN or an infinity. Call it on a returned
  state outside jit, e.g. every few steps of a training loop (inside jit, use
  `jax.config.jax_debug_nans`)."""
  named = [(f"{name}: non-finite values in its {kind} weights", a[:, i])
           for i, name in enumerate(OTHER_MEMORIES) for kind in ("boundary", "running")
           for a in jax.tree.leaves(getattr(state, f"other_{kind}"))]
  named += [(f"M_memory: non-finite values in its {kind} weights", a)
            for kind in ("boundary", "running")
            for a in jax.tree.leaves(getattr(state, f"memory_{kind}"))]
  named += [(f"{name}: non-finite values in the convolution cache", getattr(state, name))
            for name in ("conv_x", "conv_q")]
  bad = first_nonfinite(named)
  if bad:
    raise FloatingPointError(f"SelfModifyingMemory {bad[0]}")
