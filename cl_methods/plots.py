"""PNG plots of continual-learning results (matplotlib's object API, no pyplot state).

* `accuracy_matrix`: heatmap of R[i, j] with the values written in the cells (accuracies,
  or a language model's losses);
* `accuracy_curves`: accuracy on every context over training steps, with the context
  boundaries marked; beside it the same for interleaved (joint) training when given: the
  forgetting picture, and the stability gap (De Lange et al. 2023) right after boundaries;
* `metric_bars`: one bar per group of runs with its standard deviation (e.g. forgetting
  per architecture and method);
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


def accuracy_matrix(matrix, path: str, title: str = "", *, labels=None, value_range=(0.0, 1.0),
                    what: str = "accuracy matrix R[i, j]", fmt: str = ".2f"):
  """Heatmap of R (rows: after training context i; columns: tested on context j), the
  values written in the cells; `labels` name the contexts (default 1..T), `value_range`
  fixes the colour scale (None: the data's)."""
  r = np.asarray(matrix)
  t = r.shape[0]
  labels = labels or [str(j + 1) for j in range(t)]
  low, high = value_range or (float(r.min()), float(r.max()))
  fig = Figure(figsize=(1.0 + 0.8 * t, 0.8 + 0.7 * t))
  ax = fig.add_subplot()
  im = ax.imshow(r, vmin=low, vmax=high, cmap="viridis")
  for i in range(t):
    for j in range(t):
      ax.text(j, i, format(r[i, j], fmt), ha="center", va="center", fontsize=8,
              color="white" if r[i, j] < low + 0.6 * (high - low) else "black")
  ax.set_xticks(range(t), labels, fontsize=7)
  ax.set_yticks(range(t), labels, fontsize=7)
  ax.set_xlabel("tested on context j")
  ax.set_ylabel("after training context i")
  ax.set_title(title or what, fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.046)
  _save(fig, path)


def _curve_panel(ax, steps, acc, boundaries, title, labels=None, ylim=(-0.02, 1.02)):
  acc = np.asarray(acc)
  for j in range(acc.shape[1]):
    ax.plot(steps, acc[:, j], label=labels[j] if labels else f"context {j + 1}", lw=1.2)
  for b in boundaries[:-1]:
    ax.axvline(b, color="grey", ls="--", lw=0.8)
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.set_xlabel("training step")
  ax.set_title(title, fontsize=9)


def accuracy_curves(steps, accuracy, boundaries, path: str, title: str = "",
                    interleaved=None, *, labels=None, ylabel: str = "test accuracy",
                    ylim=(-0.02, 1.02)):
  """Per-context accuracy (or any score: `ylabel`, `ylim` None for the data's range) over
  training; `interleaved` = (steps, scores) of joint training; `labels` name the contexts."""
  panels = 2 if interleaved is not None else 1
  fig = Figure(figsize=(5.5 * panels, 3.6))
  axes = [fig.add_subplot(1, panels, p + 1) for p in range(panels)]
  _curve_panel(axes[0], steps, accuracy, boundaries, title or "sequential", labels, ylim)
  if interleaved is not None:
    _curve_panel(axes[1], interleaved[0], interleaved[1], boundaries,
                 "interleaved (joint), same steps", labels, ylim)
    if ylim is None:
      both = [a.get_ylim() for a in axes]
      for a in axes:
        a.set_ylim(min(b[0] for b in both), max(b[1] for b in both))
  axes[0].set_ylabel(ylabel)
  axes[-1].legend(fontsize=7, loc="best")
  _save(fig, path)


def metric_bars(names, means, stds, path: str, ylabel: str, title: str = ""):
  """One bar per run group (mean, with a std error bar), e.g. forgetting per method."""
  fig = Figure(figsize=(1.2 + 0.45 * len(names), 3.4))
  ax = fig.add_subplot()
  ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="tab:blue")
  ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
  ax.axhline(0.0, color="black", lw=0.6)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
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
