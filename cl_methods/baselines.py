"""The two reference points: fine-tuning (lower bound) and joint training (upper bound).

van de Ven, Tuytelaars & Tolias 2022, sec. 5: "None" trains on each context in turn with no
protection against forgetting; "Joint" trains on the data of all contexts together. Here
joint training sees the contexts interleaved from the first step for the same total number
of steps as a sequential run, and is evaluated at the same steps, so its accuracy matrix and
curves can be set beside a sequential run's (the interleaved half of the forgetting
picture).
"""
from cl_methods import method as method_lib


def finetune(apply_fn) -> method_lib.ContinualMethod:
  """Plain sequential training on each context's cross-entropy."""
  return method_lib.ContinualMethod(
      name="finetune", family="baseline",
      loss=method_lib.cross_entropy_loss(apply_fn),
      predict=method_lib.classifier_predict(apply_fn))


def joint(apply_fn) -> method_lib.ContinualMethod:
  """Training on all contexts interleaved (the runner draws every batch from all contexts)."""
  return method_lib.ContinualMethod(
      name="joint", family="baseline",
      loss=method_lib.cross_entropy_loss(apply_fn),
      predict=method_lib.classifier_predict(apply_fn),
      interleaved=True)
