"""Logical axis names -> mesh axes, under a rules table.

Parameters of the memory layer carry logical axis names (`slots`, `value`, `embed`,
`heads`); activations use `batch`. A rules table maps each logical name to a mesh axis
(`data`, `fsdp`, `tensor`), a tuple of mesh axes, or None (replicated), e.g.

    (('batch', ('data', 'fsdp')), ('embed', None), ('heads', 'tensor'),
     ('slots', 'fsdp'), ('value', 'tensor'))

A mapping {logical: target} (a dict or an ml_collections ConfigDict) is accepted too. Semantics follow the runtime's table in
`experiments/mesh.py` (which a library may not import): every logical name used must have
an entry, and a mesh axis shards at most one dimension of an array (a later dimension
that names an axis already used is not sharded along it).
"""
from collections.abc import Sequence

import jax
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
    dims.append(axes if axes else None)
  return P(*dims)


def spec_axes(spec: P, dim: int) -> tuple[str, ...]:
  """The mesh axes that shard dimension `dim` of a mesh PartitionSpec, as a tuple."""
  entry = tuple(spec)[dim] if dim < len(spec) else None
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def param_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules):
  """NamedShardings for `nnx.to_pure_dict(state)`, from the parameters' logical names."""
  logical = nnx.to_pure_dict(nnx.get_partition_spec(state))
  rules = normalize_rules(rules)
  return jax.tree.map(
      lambda spec: NamedSharding(mesh, logical_to_mesh_spec(spec, rules, mesh.axis_names)),
      logical, is_leaf=lambda x: isinstance(x, P))
