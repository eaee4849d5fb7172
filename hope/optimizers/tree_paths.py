"""Parameter paths as strings, and the shape checks shared by the matrix-only rules."""
import jax


def path_name(path) -> str:
  """A key path as "a/b/0/c" (dict keys, sequence indices and attribute names joined by "/").

  The zoo's one spelling of parameter paths. (flax.traverse_util.flatten_dict(sep="/")
  refuses the integer keys of nnx's layer lists and orders leaves by insertion, not as
  `jax.tree.leaves` does.)"""
  parts = []
  for key in path:
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def named_leaves(tree) -> list[tuple[str, object]]:
  """[(path name, leaf)] in `jax.tree.leaves` order."""
  return [(path_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def require_matrices(tree, rule: str) -> None:
  """Raises ValueError naming every leaf of `tree` that is not a 2-D matrix."""
  bad = [f"{name} {tuple(x.shape)}" for name, x in named_leaves(tree) if len(x.shape) != 2]
  if bad:
    raise ValueError(f"{rule} works on 2-D matrices only, but got {', '.join(bad[:5])}"
                     f"{' ...' if len(bad) > 5 else ''}; route the other parameters to another "
                     f"rule with optax.partition or hope.optimizers.multi_frequency")
