"""A declarative config schema: each field's type, range and allowed values, and the rules
between fields, checked before anything is compiled or written.

A schema is a tuple of `Field`s and `Relation`s. `check(config, schema)` raises `UsageError`
for the first field that is missing, of the wrong type, out of range or not an allowed value,
naming the field and what it accepts ("config.steps must be a positive integer, got 0"), then
for the first relation that does not hold. Paths are dotted; `*` matches any key
(`arm_models.*.model.mlp_dim`). Integers are bounded by int32 (counters and indices on the
device are int32) and numbers must be finite unless a field says otherwise.

`LM_TRAINING` is the schema of every pretraining config (experiments/configs/common.py).
"""
import dataclasses
import fnmatch
import math
import numbers

import ml_collections

from runtime.errors import UsageError

INT_MAX = 2 ** 31 - 1
KINDS = ("int", "float", "bool", "str", "ints", "floats", "names")


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field. kind: "int", "float", "bool", "str", "ints" / "floats" (a non-empty
  tuple of them, each in range), or "names" (a comma-separated list of `choices`).
  low/high bound the value (low_open/high_open: exclusive); `choices` lists the allowed
  values; `special` values are accepted as they are (e.g. -1 for "the rest", None for
  "off"), and `note` says what they or the bounds mean."""
  path: str
  kind: str
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  choices: tuple | None = None
  special: tuple = ()
  note: str = ""

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Field {self.path}: kind {self.kind!r} is not one of {KINDS}")

  @property
  def numeric(self) -> bool:
    return self.kind in ("int", "float", "ints", "floats")

  def expected(self) -> str:
    """What the field accepts, in words."""
    if self.kind == "bool":
      text = "True or False"
    elif self.kind in ("str", "names") and self.choices is not None:
      names = [repr(c) for c in self.choices]
      text = " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)
    elif self.kind == "str":
      text = "a string"
    else:
      text = _range_words(self)
      if self.kind in ("ints", "floats"):  # "an integer in 1..9" -> "integers in 1..9"
        noun = "integer" if self.kind == "ints" else "number"
        text = "a non-empty tuple of " + text.split(" ", 1)[1].replace(noun, noun + "s", 1)
    if self.special:
      text += ", or " + " or ".join(repr(s) for s in self.special)
    return text + (f" ({self.note})" if self.note else "")

  def problem(self, value) -> str | None:
    """None when `value` is acceptable, else what is wrong with it."""
    if value in self.special and not isinstance(value, bool):
      return None
    if self.kind == "bool":
      ok = isinstance(value, bool)
    elif self.kind == "str":
      ok = isinstance(value, str) and (self.choices is None or value in self.choices)
    elif self.kind == "names":
      names = split_names(value) if isinstance(value, str) else []
      unknown = [n for n in names if self.choices is not None and n not in self.choices]
      if not names or unknown:
        return (f"config.{self.path}: unknown name(s) {unknown or [value]}; choose from "
                f"{sorted(self.choices or ())} (comma-separated)")
      if len(set(names)) != len(names):
        return f"config.{self.path}: {value!r} names an entry twice"
      return None
    elif self.kind in ("ints", "floats"):
      one = "int" if self.kind == "ints" else "float"
      ok = (isinstance(value, (tuple, list)) and len(value) > 0
            and all(_in_range(dataclasses.replace(self, kind=one), v) for v in value))
    else:
      ok = _in_range(self, value)
    return None if ok else f"config.{self.path} must be {self.expected()}, got {value!r}"


def split_names(value: str) -> list[str]:
  """'a, b,c' -> ['a', 'b', 'c']."""
  return [n.strip() for n in str(value).split(",") if n.strip()]


def prefixed(prefix: str, schema) -> tuple:
  """`schema`'s fields and relations with `prefix` before every path."""
  out = []
  for item in schema:
    if isinstance(item, Field):
      out.append(dataclasses.replace(item, path=prefix + item.path))
    else:
      out.append(dataclasses.replace(item, left=prefix + item.left, right=prefix + item.right))
  return tuple(out)


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _in_range(field: Field, v) -> bool:
  if field.kind == "int":
    if not _is_int(v):
      return False
    high = INT_MAX if field.high is None else field.high
  else:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
      return False
    high = math.inf if field.high is None else field.high
  low = -math.inf if field.low is None else field.low
  above = v > low if field.low_open else v >= low
  below = v < high if field.high_open else v <= high
  return above and below


def _range_words(field: Field) -> str:
  integer = field.kind in ("int", "ints")
  noun = "integer" if integer else "number"
  low, high = field.low, field.high
  if high is None:
    if integer and low == 1 or not integer and low == 0 and field.low_open:
      return f"a positive {noun}"
    if integer and low == 0:
      return "a non-negative integer"
    if low is None:
      return f"an {noun}" if integer else f"a {noun}"
    return f"{'an' if integer else 'a'} {noun} {'>' if field.low_open else '>='} {low:g}"
  if integer:
    return f"an integer in {int(low)}..{int(high)}"
  return (f"a number in {'(' if field.low_open else '['}{low:g}, {high:g}"
          f"{')' if field.high_open else ']'}")


@dataclasses.dataclass(frozen=True)
class Relation:
  """A rule between two fields: left <= right ("<="), left < right ("<"), left divides
  right ("divides"), or left is a multiple of right ("multiple of"). Checked only when both
  fields hold acceptable values, and `when(config)` (if given) is true."""
  left: str
  op: str
  right: str
  when: object = None

  def holds(self, a, b) -> bool:
    return {"<=": lambda: a <= b, "<": lambda: a < b, "divides": lambda: b % a == 0,
            "multiple of": lambda: a % b == 0}[self.op]()

  def problem(self, a, b) -> str:
    words = {"<=": "exceeds", "<": "must be less than", "divides": "must divide",
             "multiple of": "must be a multiple of"}[self.op]
    return f"config.{self.left} ({a!r}) {words} config.{self.right} ({b!r})"


def get(config, path: str):
  """The value at a dotted path (no wildcards); KeyError if absent."""
  node = config
  for part in path.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      raise KeyError(path)
    node = node[part]
  return node


def leaves(config, prefix: str = "") -> dict:
  """{dotted path: value} of every leaf of a (nested) ConfigDict."""
  out = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)) and value:
      out.update(leaves(value, f"{path}."))
    else:
      out[path] = value
  return out


def field_paths(config, field: Field) -> list[str]:
  """The config's paths that `field` (with wildcards) names."""
  if "*" not in field.path:
    return [field.path]
  return [p for p in leaves(config) if fnmatch.fnmatchcase(p, field.path)
          and p.count(".") == field.path.count(".")]


def check(config, schema) -> None:
  """Raises UsageError for the first field, then the first relation, of `schema` that
  `config` violates."""
  for item in schema:
    if isinstance(item, Field):
      for path in field_paths(config, item):
        try:
          value = get(config, path)
        except KeyError:
          raise UsageError(f"config.{path} is missing: it must be {item.expected()}") from None
        problem = dataclasses.replace(item, path=path).problem(value)
        if problem:
          raise UsageError(problem)
  for item in schema:
    if isinstance(item, Relation) and (item.when is None or item.when(config)):
      a, b = get(config, item.left), get(config, item.right)
      if not item.holds(a, b):
        raise UsageError(item.problem(a, b))


def positive_int(path: str, **kw) -> Field:
  return Field(path, "int", low=1, **kw)


LM_TRAINING = (
    Field("seed", "int", low=0),
    positive_int("steps"), positive_int("batch_size"), positive_int("seq_len"),
    Field("learning_rate", "float", low=0, low_open=True),
    Field("warmup_steps", "int", low=0),
    Field("weight_decay", "float", low=0, note="0: off"),
    Field("grad_clip", "float", low=0, note="0: off"),
    positive_int("log_every"), positive_int("checkpoint_every"),
    positive_int("keep_checkpoints"), positive_int("eval_batches"),
    Field("async_checkpoints", "bool"),
    Field("on_nonfinite", "str", choices=("stop", "skip")),
    positive_int("max_consecutive_skips"),
    Field("optimizer.every", "int", low=1, special=(None,), note="None: frozen"),
    Field("optimizer.value_lr_multiplier", "float", low=0),
    Field("optimizer.sparse_value_updates", "bool"),
    Field("optimizer.accumulate", "str", choices=("sum", "mean")),
    Field("optimizer.kwargs.b1", "float", low=0, high=1, high_open=True),
    Field("optimizer.kwargs.b2", "float", low=0, high=1, high_open=True),
    Field("optimizer.kwargs.eps", "float", low=0, low_open=True),
    Field("mesh.*", "int", low=1, special=(-1,), note="-1: the remaining devices"),
    Field("data.validation_percent", "int", low=1, high=99),
    Field("data.source", "str",
          note="a built-in corpus, a text file or folder, or a prepared shard directory"),
    Field("data.workers", "int", low=0, note="0: batches made in process"),
    Field("model.name", "str"),
    Field("model.vocab_size", "int", low=1),
    Field("model.dim", "int", low=1), Field("model.num_layers", "int", low=1),
    Field("model.num_heads", "int", low=1), Field("model.mlp_dim", "int", low=1),
    Field("model.head_dim", "int", low=0, note="0: dim / num_heads"),
    Field("model.dropout_rate", "float", low=0, high=1, high_open=True),
    Field("model.rope_base", "float", low=0, low_open=True),
    Field("model.window", "int", low=0, note="0: full attention"),
    Field("model.num_slots", "int", low=1), Field("model.top_k", "int", low=1),
    Field("model.memory_heads", "int", low=1), Field("model.key_dim", "int", low=1),
    Field("model.memory_layers", "ints", low=0),
    Relation("warmup_steps", "<=", "steps"),
)


def applies(config, item) -> bool:
  """Whether the config has an optional field of LM_TRAINING (model.*, optimizer.kwargs.*,
  data.workers)."""
  if not isinstance(item, Field) or not item.path.startswith(("model.", "optimizer.kwargs.",
                                                              "data.workers")):
    return True
  try:
    get(config, item.path)
    return True
  except KeyError:
    return False


def check_lm(config) -> None:
  """`check(config, LM_TRAINING)`; the model fields and the rule's arguments
  (optimizer.kwargs) are checked where the config has them (the model builders and the
  rules check the rest), and config.model.name must exist."""
  if "model" not in config or "name" not in config.model:
    raise UsageError("config.model.name is missing: the config file must define the model")
  check(config, tuple(f for f in LM_TRAINING if applies(config, f)))
