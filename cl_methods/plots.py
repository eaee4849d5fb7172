"""PNG plots of continual-learning results (matplotlib's object API, no pyplot state).

* `accuracy_matrix`: heatmap of R[i, j] with the values written in the cells;
* `accuracy_curves`: accuracy on every context over training steps, with the context
  boundaries marked; beside it the same for interleaved (joint) training when given: the
  forgetting picture, and the stability gap (De Lange et al. 2023) right after boundaries;
* `plasticity_stability`: a sweep over one stability knob: learning accuracy (plasticity),
  forgetting and final average accuracy against the knob, and plasticity against
  stability (1 - forgetting) with each point labelled by its knob value.
"""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig, path):
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=110, bbox_inches="tight")


def accuracy_matrix(matrix, path: str, title: str = ""):
  """Heatmap of R (rows: after training context i; columns: tested on context j)."""
  r = np.asarray(matrix)
  t = r.shape[0]
  fig = Figure(figsize=(1.0 + 0.7 * t, 0.8 + 0.7 * t))
  ax = fig.add_subplot()
  im = ax.imshow(r, vmin=0.0, vmax=1.0, cmap="viridis")
  for i in range(t):
    for j in range(t):
      ax.text(j, i, f"{r[i, j]:.2f}", ha="center", va="center", fontsize=8,
              color="white" if r[i, j] < 0.6 else "black")
  ax.set_xticks(range(t), [str(j + 1) for j in range(t)])
  ax.set_yticks(range(t), [str(i + 1) for i in range(t)])
  ax.set_xlabel("tested on context j")
  ax.set_ylabel("after training context i")
  ax.set_title(title or "accuracy matrix R[i, j]", fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.046)
  _save(fig, path)


def _curve_panel(ax, steps, acc, boundaries, title):
  acc = np.asarray(acc)
  for j in range(acc.shape[1]):
    ax.plot(steps, acc[:, j], label=f"context {j + 1}", lw=1.2)
  for b in boundaries[:-1]:
    ax.axvline(b, color="grey", ls="--", lw=0.8)
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("training step")
  ax.set_title(title, fontsize=9)


def accuracy_curves(steps, accuracy, boundaries, path: str, title: str = "",
                    interleaved=None):
  """Per-context accuracy over training; `interleaved` = (steps, accuracy) of joint training."""
  panels = 2 if interleaved is not None else 1
  fig = Figure(figsize=(5.5 * panels, 3.6))
  axes = [fig.add_subplot(1, panels, p + 1) for p in range(panels)]
  _curve_panel(axes[0], steps, accuracy, boundaries, title or "sequential")
  if interleaved is not None:
    _curve_panel(axes[1], interleaved[0], interleaved[1], boundaries,
                 "interleaved (joint), same steps")
  axes[0].set_ylabel("test accuracy")
  axes[-1].legend(fontsize=7, loc="lower right")
  _save(fig, path)


def plasticity_stability(knob: str, values, results, path: str, title: str = ""):
  """`results[i]` is the metrics dict of the run with knob = values[i]."""
  values = np.asarray(values, dtype=float)
  la = np.array([r["learning_accuracy"] for r in results])
  fg = np.array([r["forgetting"] for r in results])
  acc = np.array([r["acc"] for r in results])
  fig = Figure(figsize=(11, 3.8))
  ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  ax1.plot(values, la, "o-", label="learning accuracy (plasticity)")
  ax1.plot(values, fg, "s-", label="forgetting")
  ax1.plot(values, acc, "^-", label="average accuracy")
  if np.all(values > 0) and values.max() / values.min() >= 100:
    ax1.set_xscale("log")
  ax1.set_xlabel(knob)
  ax1.set_ylim(-0.02, 1.02)
  ax1.legend(fontsize=7)
  ax1.set_title(title or f"sweep over {knob}", fontsize=9)
  ax2.plot(1.0 - fg, la, "o-")
  for v, x, y in zip(values, 1.0 - fg, la):
    ax2.annotate(f"{v:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax2.set_xlabel("stability (1 - forgetting)")
  ax2.set_ylabel("plasticity (learning accuracy)")
  ax2.set_title("plasticity vs stability", fontsize=9)
  _save(fig, path)
