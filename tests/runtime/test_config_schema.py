"""Every numeric config field of pretrain, continual, compare and fact_injection refuses 0
(where it must be positive), negative, NaN and huge values (beyond int32 for integers, inf
for numbers) with one line naming the field, before anything is compiled or written; every
rule between two fields holds at equality where it is inclusive."""
import dataclasses
import math

import ml_collections
import pytest

from experiments.compare import study as compare_study
from experiments.configs import compare, continual, fact_injection, transformer
from experiments.continual import study as continual_study
from experiments.fact_injection import study as fact_study
from runtime import config_schema, loop
from runtime.config_schema import Field, Relation
from runtime.errors import UsageError
from tests.helpers import override, tiny_config

SPREAD_OVER_WORKERS = True


def _compare_config():
  config = compare.get_config()
  config.arms, config.studies = "transformer", "recall"
  return config


def _lm_schema(config):
  return tuple(f for f in config_schema.LM_TRAINING if config_schema.applies(config, f))


# entry point: (its config, its schema, what the entry point runs first on a workdir)
ENTRIES = {
    "pretrain": (lambda: transformer.get_config("tiny"), _lm_schema,
                 lambda config, workdir: loop.pretrain(config, workdir)),
    "continual": (continual.get_config, lambda config: continual_study.SCHEMA,
                  lambda config, workdir: continual_study.validate(config)),
    "compare": (_compare_config, compare_study.schema,
                lambda config, workdir: compare_study.run(config, workdir, "test")),
    "fact_injection": (fact_injection.get_config,
                       lambda config: fact_study.SCHEMA + _lm_schema(config),
                       lambda config, workdir: fact_study.study(config, workdir)),
}
BAD = {"zero": 0, "negative": -1, "nan": math.nan, "huge": None}


def _bad_value(field: Field, name: str):
  one = field.kind in ("int", "ints")
  value = (2 ** 31 if one else math.inf) if name == "huge" else BAD[name]
  if one and name == "nan":
    value = math.nan
  return (value,) if field.kind in ("ints", "floats") else value


def _cases():
  for entry, (make, schema, _) in ENTRIES.items():
    config = make()
    for field in schema(config):
      if not isinstance(field, Field) or not field.numeric:
        continue
      for path in config_schema.field_paths(config, field):
        for name in BAD:
          value = _bad_value(field, name)
          if dataclasses.replace(field, path=path).problem(value) is not None:
            yield pytest.param(entry, path, value, id=f"{entry}-{path}-{name}")


@pytest.mark.parametrize("entry, path, value", list(_cases()))
def test_bad_numeric_value_is_one_line_naming_the_field(entry, path, value, tmp_path):
  make, _, start = ENTRIES[entry]
  # Not type-safe, so that an integer field can hold NaN here (on the command line
  # ml_collections refuses `--config.seed=nan` itself, also in one line).
  config = ml_collections.ConfigDict(make().to_dict(), type_safe=False)
  override(config, {path: value})
  workdir = tmp_path / "workdir"
  with pytest.raises(UsageError) as raised:
    start(config, str(workdir))
  message = str(raised.value)
  assert f"config.{path}" in message and "\n" not in message, message
  assert not workdir.exists()


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_every_numeric_field_has_a_rule(entry):
  make, schema, _ = ENTRIES[entry]
  config = make()
  covered = {p for f in schema(config) if isinstance(f, Field)
             for p in config_schema.field_paths(config, f)}
  numeric = {p for p, v in config_schema.leaves(config).items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)
             or isinstance(v, tuple) and v and all(isinstance(x, (int, float)) for x in v)}
  assert numeric <= covered, sorted(numeric - covered)


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_fields_equal_to_their_bound_are_accepted(entry):
  make, schema, _ = ENTRIES[entry]
  relations = [r for r in schema(make()) if isinstance(r, Relation)]
  for relation in relations:
    config = make()
    override(config, {relation.left: config_schema.get(config, relation.right)})
    if relation.op == "<":
      with pytest.raises(UsageError, match=f"config.{relation.left}"):
        config_schema.check(config, schema(config))
    else:
      config_schema.check(config, schema(config))
  assert relations or entry == "compare" or entry == "fact_injection"


def test_steps_equal_to_warmup_trains(tmp_path):
  config = tiny_config(steps=4, warmup_steps=4)
  state = loop.pretrain(config, str(tmp_path))
  assert int(state["step"]) == 4
  rates = [float(loop.training.learning_rate_schedule(config)(s)) for s in range(5)]
  assert rates == sorted(rates) and rates[-1] == pytest.approx(config.learning_rate)
