"""A chunk function run as one Pallas kernel, with a Pallas kernel for its backward pass.

The memories' chunk updates (the Titans dual form, `hope.neural_memory._chunk`; the
self-modifying memory's inner update with its closed-form DGD, `hope.self_modifying`) are
dozens of small matmuls, triangular products and element-wise ops on a few KB of state.
XLA launches them one by one; `fused_kernel(fn)` runs the whole of `fn` as one kernel that
keeps its operands on chip:

  forward:   outputs = fn(*args)                         one `pallas_call`
  backward:  cotangents of args = vjp(fn, *args)(ct)     one `pallas_call` (fn recomputed)

wired together with `jax.custom_vjp`, so the backward pass saves only fn's inputs. Each call
is one program over whole arrays; `jax.vmap` over the batch and heads (as the memory
modules do) adds the kernel's grid axes. Inputs must be floating-point arrays (a pytree);
static settings are bound into `fn` beforehand (functools.partial). The kernel body is the
same Python function as the XLA path, so the two compute the same expression (with
`hope.matmul`'s products traced as plain ops, `matmul.plain`); the tests compare them in
values and gradients.

On CPU the kernels run in Pallas' interpret mode (the body evaluated op by op: correct and
slow, for tests); on GPU and TPU they are compiled. Choose them with a memory's
`kernel="pallas"`; the default `kernel="xla"` leaves the chunk to XLA.
"""
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from hope import matmul

KERNELS = ("xla", "pallas")


def check_kernel(owner: str, kernel) -> None:
  """ValueError unless kernel is one of KERNELS."""
  if not isinstance(kernel, str) or kernel not in KERNELS:
    raise ValueError(f"{owner}kernel must be 'xla' (XLA's ops) or 'pallas' (the chunk as one "
                     f"Pallas kernel, interpreted on CPU), got {kernel!r}")


def _pallas_apply(fn, args):
  """fn(*args) evaluated inside one pallas_call; args and the result are pytrees of arrays.

  Scalars travel as arrays of shape (1,): a kernel operand needs at least one axis.
  """
  leaves, tree = jax.tree.flatten(args)
  for leaf in leaves:
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(f"fused_kernel operands must be floating point, got {leaf.dtype}")
  out_leaves, out_tree = jax.tree.flatten(jax.eval_shape(fn, *args))
  lift = lambda shape: shape or (1,)

  def kernel(*refs):
    ins, outs = refs[:len(leaves)], refs[len(leaves):]
    values = [ref[...].reshape(leaf.shape) for ref, leaf in zip(ins, leaves)]
    with matmul.plain():
      result = jax.tree.leaves(fn(*jax.tree.unflatten(tree, values)))
    for ref, value in zip(outs, result):
      ref[...] = value.reshape(ref.shape).astype(ref.dtype)

  call = pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct(lift(o.shape), o.dtype) for o in out_leaves],
      interpret=jax.default_backend() == "cpu")
  results = call(*(leaf.reshape(lift(leaf.shape)) for leaf in leaves))
  return jax.tree.unflatten(out_tree, [r.reshape(o.shape) for r, o in zip(results, out_leaves)])


def fused_kernel(fn):
  """fn (arrays -> arrays) as a Pallas forward kernel with a Pallas backward kernel."""

  @jax.custom_vjp
  def fused(*args):
    return _pallas_apply(fn, args)

  def forward(*args):
    return _pallas_apply(fn, args), args

  def backward(args, cotangent):
    def pullback(args, cotangent):
      return jax.vjp(fn, *args)[1](cotangent)
    return _pallas_apply(pullback, (args, cotangent))

  fused.defvjp(forward, backward)
  return fused
