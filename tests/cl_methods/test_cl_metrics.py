"""Known-answer tests of the accuracy-matrix metrics on hand-made matrices, and of the
accuracy counts the runner fills them with."""
import jax.numpy as jnp
import numpy as np
import pytest

from cl_methods import losses
from cl_methods import metrics

# R[i, j]: accuracy on context j after training context i (3 contexts).
R = np.array([[0.9, 0.1, 0.2],
              [0.6, 0.8, 0.3],
              [0.5, 0.7, 0.95]])
B = np.array([0.1, 0.2, 0.25])   # random-init accuracies


def test_average_accuracy_is_mean_of_last_row():
  assert metrics.average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_backward_transfer():
  # ((0.5 - 0.9) + (0.7 - 0.8)) / 2
  assert metrics.backward_transfer(R) == pytest.approx(-0.25)


def test_forward_transfer_against_random_init():
  # ((R[0, 1] - b1) + (R[1, 2] - b2)) / 2 = ((0.1 - 0.2) + (0.3 - 0.25)) / 2
  assert metrics.forward_transfer(R, B) == pytest.approx(-0.025)


def test_forgetting_uses_best_earlier_accuracy():
  # context 0: max(0.9, 0.6) - 0.5 = 0.4; context 1: max(0.1, 0.8) - 0.7 = 0.1
  assert metrics.forgetting(R) == pytest.approx(0.25)
  # A context that got better after it was learned counts as negative forgetting.
  r = np.array([[0.5, 0.0], [0.7, 0.9]])
  assert metrics.forgetting(r) == pytest.approx(-0.2)
  assert metrics.backward_transfer(r) == pytest.approx(0.2)


def test_learning_accuracy_is_mean_of_diagonal():
  assert metrics.learning_accuracy(R) == pytest.approx((0.9 + 0.8 + 0.95) / 3)


def test_running_average_accuracy():
  np.testing.assert_allclose(metrics.running_average_accuracy(R),
                             [0.9, 0.7, (0.5 + 0.7 + 0.95) / 3])


def test_perfect_memory_and_total_forgetting():
  eye = np.eye(4)
  assert metrics.average_accuracy(eye) == pytest.approx(0.25)
  assert metrics.backward_transfer(eye) == pytest.approx(-1.0)
  assert metrics.forgetting(eye) == pytest.approx(1.0)
  ones = np.ones((4, 4))
  assert metrics.backward_transfer(ones) == 0.0 and metrics.forgetting(ones) == 0.0


def test_min_accuracy_sees_the_stability_gap():
  steps = np.array([0, 10, 20, 30, 40])
  # Context 0 ends at step 20 with 0.9, dips to 0.3 at step 30, recovers to 0.8.
  acc = np.array([[0.1, 0.1], [0.6, 0.1], [0.9, 0.2], [0.3, 0.7], [0.8, 0.9]])
  assert metrics.min_accuracy(steps, acc, np.array([20, 40])) == pytest.approx(0.3)
  # Boundary-only evaluation would have reported forgetting of only 0.1.
  r = np.array([[0.9, 0.2], [0.8, 0.9]])
  assert metrics.forgetting(r) == pytest.approx(0.1)


def test_single_context_and_summary():
  r = np.array([[0.7]])
  s = metrics.summarize(r, np.array([0.1]))
  assert s == {"acc": 0.7, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0,
               "learning_accuracy": 0.7}


def test_bad_shapes_are_rejected():
  with pytest.raises(ValueError, match="square"):
    metrics.average_accuracy(np.ones((2, 3)))
  with pytest.raises(ValueError, match="random-init"):
    metrics.forward_transfer(R, np.ones(2))


def test_accuracy_counts_no_prediction_is_wrong():
  scores = jnp.array([[2.0, 1.0, 0.0], [losses.MASKED_LOGIT] * 3, [0.0, 5.0, 1.0]])
  mask = jnp.array([[True, True, False], [True, True, True], [True, False, True]])
  correct, total = losses.accuracy_counts(scores, jnp.array([0, 0, 2]), mask,
                                          jnp.array([True, True, True]))
  # Row 0: argmax 0, right. Row 1: nothing to predict, wrong. Row 2: unit 1 masked, picks 2.
  assert int(correct) == 2 and int(total) == 3
