"""Continual-learning metrics derived from one accuracy matrix (and the accuracy curves).

Notation (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory", sec. 2): `R[i, j]` is the
test accuracy on context j after the model finished training on context i (0-based here,
T contexts), and `b[j]` the accuracy on context j of the randomly initialised model.

* average accuracy  ACC = 1/T sum_j R[T-1, j]                                  (GEM eq. 2)
* backward transfer BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])            (GEM eq. 3)
* forward transfer  FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - b[j])                 (GEM eq. 4)
* forgetting        F   = 1/(T-1) sum_{j<T-1} (max_{l<T-1} R[l, j] - R[T-1, j])
                                     (Chaudhry et al. 2018, "Riemannian Walk", eq. 5-6)
* learning accuracy LA  = 1/T sum_j R[j, j]          (Riemer et al. 2019; plasticity)
* min-ACC: mean over contexts k < T-1 of the lowest accuracy on k measured at any evaluation
  after k finished training (De Lange, van de Ven & Tuytelaars 2023, "Continual evaluation
  for lifelong learning", eq. 4): it exposes the stability gap that boundary-only
  evaluation hides.

All functions take plain arrays and return Python floats; with a single context BWT, FWT,
forgetting and min-ACC are undefined and returned as 0.0.
"""
import numpy as np


def _square(accuracy_matrix) -> np.ndarray:
  r = np.asarray(accuracy_matrix, dtype=np.float64)
  if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
    raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got shape {r.shape}")
  return r


def average_accuracy(accuracy_matrix) -> float:
  """ACC: mean accuracy over all contexts after training on the last one (GEM eq. 2)."""
  r = _square(accuracy_matrix)
  return float(r[-1].mean())


def running_average_accuracy(accuracy_matrix) -> np.ndarray:
  """Mean of R[i, :i+1] for each i: accuracy on the contexts seen so far after context i."""
  r = _square(accuracy_matrix)
  return np.array([r[i, : i + 1].mean() for i in range(r.shape[0])])


def backward_transfer(accuracy_matrix) -> float:
  """BWT: how training on later contexts changed accuracy on earlier ones (GEM eq. 3).

  Negative values mean forgetting.
  """
  r = _square(accuracy_matrix)
  t = r.shape[0]
  if t == 1:
    return 0.0
  return float(np.mean(r[-1, :-1] - np.diag(r)[:-1]))


def forward_transfer(accuracy_matrix, random_init_accuracy) -> float:
  """FWT: accuracy on context j just before training on it, minus random init (GEM eq. 4)."""
  r = _square(accuracy_matrix)
  b = np.asarray(random_init_accuracy, dtype=np.float64)
  t = r.shape[0]
  if b.shape != (t,):
    raise ValueError(f"random-init accuracies must have shape ({t},), got {b.shape}")
  if t == 1:
    return 0.0
  before = np.array([r[j - 1, j] for j in range(1, t)])
  return float(np.mean(before - b[1:]))


def forgetting(accuracy_matrix) -> float:
  """Average forgetting: best earlier accuracy on j minus final accuracy on j (RWalk eq. 5-6)."""
  r = _square(accuracy_matrix)
  t = r.shape[0]
  if t == 1:
    return 0.0
  best_before_end = r[:-1, :-1].max(axis=0)
  return float(np.mean(best_before_end - r[-1, :-1]))


def learning_accuracy(accuracy_matrix) -> float:
  """LA: mean accuracy on each context right after training on it (plasticity)."""
  r = _square(accuracy_matrix)
  return float(np.mean(np.diag(r)))


def min_accuracy(curve_steps, curve_accuracy, boundary_steps) -> float:
  """min-ACC (De Lange et al. 2023, eq. 4) from accuracy curves.

  Args:
    curve_steps: (E,) training step of each evaluation.
    curve_accuracy: (E, T) accuracy on every context at each evaluation.
    boundary_steps: (T,) step at which training on each context finished.

  Returns:
    Mean over contexts k < T-1 of min accuracy on k over evaluations at steps >= the end of
    k's training (that end included, so the value is never above R[k, k]).
  """
  steps = np.asarray(curve_steps)
  acc = np.asarray(curve_accuracy, dtype=np.float64)
  ends = np.asarray(boundary_steps)
  t = ends.shape[0]
  if acc.ndim != 2 or acc.shape != (steps.shape[0], t):
    raise ValueError(f"curve accuracy must have shape ({steps.shape[0]}, {t}), got {acc.shape}")
  if t == 1:
    return 0.0
  worst = []
  for k in range(t - 1):
    after = steps >= ends[k]
    if not after.any():
      raise ValueError(f"no evaluation at or after the end of context {k} (step {ends[k]})")
    worst.append(acc[after, k].min())
  return float(np.mean(worst))


def summarize(accuracy_matrix, random_init_accuracy) -> dict:
  """All boundary metrics of one run, as a dict of floats."""
  return {
      "acc": average_accuracy(accuracy_matrix),
      "bwt": backward_transfer(accuracy_matrix),
      "fwt": forward_transfer(accuracy_matrix, random_init_accuracy),
      "forgetting": forgetting(accuracy_matrix),
      "learning_accuracy": learning_accuracy(accuracy_matrix),
  }


def loss_summary(loss_matrix, initial_losses) -> dict:
  """The boundary metrics of a loss matrix (lower is better: a language model's validation
  loss L[i, j] on domain j after training on domain i; `initial_losses` its losses before
  any training), defined as the accuracy metrics of -L, with the signs kept:

  * avg_loss       = 1/T sum_j L[T-1, j]                                 (-ACC)
  * bwt            = 1/(T-1) sum_{j<T-1} (L[j, j] - L[T-1, j])           (BWT; < 0: forgetting)
  * fwt            = 1/(T-1) sum_{j>0} (b[j] - L[j-1, j])                (FWT; > 0: transfer)
  * forgetting     = 1/(T-1) sum_{j<T-1} (L[T-1, j] - min_{l<T-1} L[l, j])   (>= 0)
  * learning_loss  = 1/T sum_j L[j, j]                                   (-LA)
  """
  negated = -np.asarray(loss_matrix, dtype=np.float64)
  out = summarize(negated, -np.asarray(initial_losses, dtype=np.float64))
  return dict(avg_loss=-out["acc"], bwt=out["bwt"], fwt=out["fwt"],
              forgetting=out["forgetting"], learning_loss=-out["learning_accuracy"])
