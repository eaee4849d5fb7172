"""The three scenarios (Task-IL, Domain-IL, Class-IL) as output layouts over a fixed head.

van de Ven, Tuytelaars & Tolias 2022 ("Three types of incremental learning", Table 1):
* Task-IL: the context is given at test time; choose among that context's classes.
* Domain-IL: the context is not given and need not be inferred; every context has the same
  K labels (local labels 0..K-1).
* Class-IL: the context is not given and must be inferred; choose among all classes.

A layout maps (context, dataset label) to an output unit of one fixed-size head and gives,
per context, which units take part in the softmax during training and at test time, so
every method trains and evaluates with one compiled step (masking, no module surgery):

* class: one unit per class of the whole sequence (for split benchmarks the dataset labels;
  for permuted/rotated ones "label k of context c" is its own class, T*K units); all units
  active (van de Ven et al.'s default "all" active classes).
* domain: K units, target = local label, all active.
* task, shared head ("masked logits"): the dataset's label space, only the context's
  classes active. For split benchmarks these are disjoint per context, which makes the
  masked head a multi-head output; for permuted/rotated ones every context has all labels,
  so the mask is all-ones and the task identity does not enter the output.
* task, separate heads: T*K units, context c owns units [cK, (c+1)K) (multi-head output,
  used by the `separate_heads` method).
"""
import dataclasses

import numpy as np

SCENARIOS = ("task", "domain", "class")
SCENARIO_NAMES = {"task": "Task-IL", "domain": "Domain-IL", "class": "Class-IL"}


@dataclasses.dataclass(frozen=True)
class OutputLayout:
  """How one scenario maps contexts and labels onto output units."""
  scenario: str
  n_units: int
  unit_of_label: np.ndarray  # (T, n_labels) int32 output unit, -1 where not in context
  context_units: np.ndarray  # (T, K) int32 output units of each context's classes
  train_mask: np.ndarray     # (T, n_units) bool units in the softmax during training
  test_mask: np.ndarray      # (T, n_units) bool units in the argmax at test time
  separate_heads: bool
  description: str


def output_layout(contexts, scenario: str, *, separate_heads: bool = False) -> OutputLayout:
  """Builds the layout of `scenario` for a ContextSequence."""
  if scenario not in SCENARIOS:
    raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
  if separate_heads and scenario != "task":
    raise ValueError("separate heads need the context identity at test time (Task-IL only)")
  t, k = contexts.classes.shape
  n_labels = contexts.data.n_classes
  local = np.broadcast_to(np.arange(k), (t, k))
  context_of = np.broadcast_to(np.arange(t)[:, None], (t, k))
  if scenario == "domain":
    units, n_units = local, k
    what = f"{k} shared units (local labels); no context input"
  elif scenario == "class" and not contexts.disjoint_classes:
    units, n_units = context_of * k + local, t * k
    what = f"{t * k} units, one per (context, label); all active"
  elif scenario == "class":
    units, n_units = contexts.classes, n_labels
    what = f"{n_labels} units, one per class; all active"
  elif separate_heads:
    units, n_units = context_of * k + local, t * k
    what = f"separate heads: {t} heads of {k} units, the context's head active"
  else:
    units, n_units = contexts.classes, n_labels
    what = (f"{n_labels} units (dataset labels), logits masked to the context's "
            f"{k} classes")
  unit_of_label = np.full((t, n_labels), -1, np.int32)
  np.put_along_axis(unit_of_label, contexts.classes.astype(np.int64), units, axis=1)
  own = np.zeros((t, n_units), bool)
  np.put_along_axis(own, np.asarray(units, np.int64), True, axis=1)
  mask = own if scenario == "task" else np.ones((t, n_units), bool)
  return OutputLayout(scenario=scenario, n_units=int(n_units), unit_of_label=unit_of_label,
                      context_units=np.asarray(units, np.int32), train_mask=mask,
                      test_mask=mask.copy(), separate_heads=separate_heads,
                      description=f"{SCENARIO_NAMES[scenario]}: {what}")
