"""Logical axis names -> mesh axes: the one rules table of the zoo.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, `vocab`, `slots`, `value`, ...;
`hope.layers.param`), activations use `batch`. A rules table maps each logical name to a mesh
axis (`data`, `fsdp`, `tensor`), a tuple of mesh axes, or None (replicated), e.g.

    (('batch', ('data', 'fsdp')), ('embed', None), ('heads', 'tensor'),
     ('slots', 'fsdp'), ('value', 'tensor'))

or the same as a mapping {logical: target} (a dict or an ml_collections ConfigDict). Every
logical name used must have an entry. Dimensions are mapped in order, and a mesh axis that
an earlier dimension of the array already uses is dropped from a later one, so a mesh axis
shards at most one dimension. (flax's `logical_to_mesh_axes` is not used: it refuses a
logical name that occurs twice in one array, as in the [embed, embed] matrices here.) The
memory layers (`memory_layers`) and the runtime (`runtime.mesh`) both use this module.
"""
import math
from collections.abc import Sequence

import jax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

# A rules table in its normal form: ((logical, (mesh axis, ...)), ...). Hashable, so a
# module can keep it as a static attribute.
Rules = tuple[tuple[str, tuple[str, ...]], ...]


def normalize_rules(rules) -> Rules:
  """Validates the structure of a rules table and returns its hashable normal form."""
  pairs = tuple(rules.items()) if hasattr(rules, "items") else rules
  if isinstance(pairs, str) or not isinstance(pairs, Sequence):
    raise ValueError(f"sharding_rules must be a mapping or a sequence of (logical axis, mesh "
                     f"axes) pairs, got {rules!r}")
  normal = []
  for pair in pairs:
    if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
      raise ValueError(f"sharding_rules entry {pair!r} is not a (logical axis, mesh axes) pair")
    logical, target = pair
    if target is None:
      targets = ()
    elif isinstance(target, str):
      targets = (target,)
    elif isinstance(target, Sequence) and all(isinstance(t, str) for t in target):
      targets = tuple(target)
    else:
      raise ValueError(f"sharding_rules entry for logical axis {logical!r} must be a mesh axis "
                       f"name, a tuple of them, or None; got {target!r}")
    normal.append((str(logical), targets))
  return tuple(normal)


def logical_to_mesh_spec(logical_spec: P, rules, mesh_axis_names: Sequence[str]) -> P:
  """The PartitionSpec of mesh axes for a PartitionSpec of logical axis names.

  Raises ValueError when a logical name has no rule, or a rule names an axis the mesh lacks.
  """
  table = dict(normalize_rules(rules))
  used, dims = set(), []
  for logical in logical_spec:
    if logical is None:
      dims.append(None)
      continue
    if logical not in table:
      raise ValueError(f"sharding_rules have no entry for logical axis {logical!r}; add "
                       f"({logical!r}, <mesh axis, tuple of mesh axes, or None>)")
    for axis in table[logical]:
      if axis not in mesh_axis_names:
        raise ValueError(f"sharding_rules map logical axis {logical!r} to mesh axis {axis!r}, "
                         f"which the mesh does not have; its axes are {tuple(mesh_axis_names)}")
    axes = tuple(a for a in table[logical] if a not in used)
    used.update(axes)
    dims.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*dims)


def spec_axes(spec: P, dim: int) -> tuple[str, ...]:
  """The mesh axes that shard dimension `dim` of a mesh PartitionSpec, as a tuple."""
  entry = tuple(spec)[dim] if dim < len(spec) else None
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def named_shardings(abstract_tree, logical_specs, rules, mesh: jax.sharding.Mesh):
  """NamedShardings for a pytree of arrays (or shapes) and its pytree of logical specs.

  A dimension that its mesh axes do not divide evenly is replicated instead (with a warning),
  so odd sizes such as a vocabulary of 257 still run on any mesh.
  """
  def one(x, spec):
    mesh_spec = logical_to_mesh_spec(spec, rules, mesh.axis_names)
    dims = []
    for dim, size in enumerate(x.shape):
      axes = spec_axes(mesh_spec, dim)
      if size % math.prod(mesh.shape[a] for a in axes):
        logging.warning("dimension of size %d (logical %s) does not divide over mesh axes %s; "
                        "replicating it", size, spec, axes)
        axes = ()
      dims.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return NamedSharding(mesh, P(*dims))

  return jax.tree.map(one, abstract_tree, logical_specs)


def param_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules):
  """NamedShardings for `nnx.to_pure_dict(state)`, from the parameters' logical names."""
  logical = nnx.to_pure_dict(nnx.get_partition_spec(state))
  abstract = nnx.to_pure_dict(state)
  return named_shardings(abstract, logical, rules, mesh)
