"""The tables and PNG plots of `experiments.compare` (matplotlib's object API, no pyplot).

Every headline number is `mean ± std` over the seeds (population standard deviation).
* `markdown`: parameters; recall accuracy by length, and the arms whose best rate is an end
  of the sweep (`sweep_edges`); the repeated passage's readings and readback; the ablation's
  validation loss; seconds and training speed per arm and study;
* `plot_all`: recall.png, repeat_gain.png, repeat_readback.png, repeat_by_position.png,
  ablation.png (those with data).
"""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _pm(s: dict, digits: int = 3, scale: float = 1.0) -> str:
  return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"


def _bars_by_distance(r: dict, names: list, value, ylabel: str, title: str, path: str,
                      symlog: float | None = None) -> None:
  """Bars of value(arm summary, distance) = {mean, std} per arm, one bar per distance of the
  repeat study `r`, with a linear or (linear below `symlog`) symmetric log y axis."""
  distances = [str(d) for d in r["distances"]]
  fig = Figure(figsize=(1.5 + 1.1 * len(names), 3.4))
  ax = fig.add_subplot()
  width = 0.8 / len(distances)
  for j, d in enumerate(distances):
    values = [value(r["arms"][n], d) for n in names]
    ax.bar(np.arange(len(names)) + (j - (len(distances) - 1) / 2) * width,
           [v["mean"] for v in values], width, yerr=[v["std"] for v in values], capsize=2,
           label=f"distance {d}")
  ax.axhline(0, color="black", linewidth=0.6)
  if symlog:
    ax.set_yscale("symlog", linthresh=symlog)
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  _save(fig, path)


def sweep_edges(arms: dict) -> dict[str, str]:
  """{arm: "lowest" or "highest"} for each recall arm (`results["studies"]["recall"]["arms"]`)
  whose best learning rate is an end of a sweep of three or more rates: a rate beyond it,
  not swept, may do better."""
  edges = {}
  for arm, s in arms.items():
    rates = sorted(s["sweep"], key=float)              # the rates as `f"{lr:g}"` keys
    best = f"{s['learning_rate']:g}"
    if len(rates) >= 3 and best in (rates[0], rates[-1]):
      edges[arm] = "lowest" if best == rates[0] else "highest"
  return edges


def markdown(results: dict) -> str:
  """Markdown tables of a results.json dict."""
  studies = results["studies"]
  lines = [f"Measured {results['date']} on {results['machine']}, {results['seeds']} seeds "
           f"(mean ± standard deviation); wall time {results['wall_seconds'] / 60:.1f} min "
           f"(runs finished before this invocation are not rerun). "
           f"Command: `{results['command']}`", "", "| arm or variant | parameters |",
           "|---|---:|"]
  lines += [f"| {n} | {p / 1e6:.3f}M |" for n, p in results["params"].items()]
  if "recall" in studies:
    r = studies["recall"]
    cols = [str(m) for m in r["multipliers"]]
    for setting in r["settings"]:
      length, pairs = setting.split("x")
      lines += ["", f"Recall accuracy (%) on the setting of length {length} with {pairs} "
                    f"pairs; columns are multiples of that length:", "",
                "| arm | lr (best of sweep) | " + " | ".join(f"{m}x" for m in cols) + " |",
                "|---|---:|" + "---:|" * len(cols)]
      for arm, s in r["arms"].items():
        lines.append(f"| {arm} | {s['learning_rate']:g} | " + " | ".join(
            _pm(s["accuracy"][setting][m], 1, 100) for m in cols) + " |")
    lines += ["", "The sweep (seed 0): accuracy (%) at the training length per learning rate:",
              "", "| arm | " + " | ".join(f"lr {lr}" for lr in next(iter(
                  r["arms"].values()))["sweep"]) + " |",
              "|---|" + "---|" * len(next(iter(r["arms"].values()))["sweep"])]
    for arm, s in r["arms"].items():
      lines.append(f"| {arm} | " + " | ".join(
          ", ".join(f"{k} {100 * v:.0f}" for k, v in accs.items())
          for accs in s["sweep"].values()) + " |")
    if edges := sweep_edges(r["arms"]):
      lines += ["", "Best rate at an end of the sweep (a rate beyond it may do better): " +
                ", ".join(f"{arm} ({end})" for arm, end in edges.items()) + "."]
  if "repeat" in studies:
    r = studies["repeat"]
    distances = [str(d) for d in r["distances"]]
    lines += ["", f"Repeated passage ({r['passage']} bytes, trained at distance "
                  f"{r['distance']}): loss (nats/byte) on the first and second reading and "
                  f"the gain (first - second), by distance:", "",
              "| arm | " + " | ".join(f"first @{d} | second @{d} | gain @{d}"
                                      for d in distances) + " |",
              "|---|" + "---:|" * (3 * len(distances))]
    for arm, s in r["arms"].items():
      lines.append(f"| {arm} | " + " | ".join(
          f"{_pm(s['readings'][d]['first'])} | {_pm(s['readings'][d]['second'])} | "
          f"{_pm(s['readings'][d]['gain'])}" for d in distances) + " |")
    lines += ["", "Readback: the second reading's loss after another passage (P' | F | P) "
                  "minus after the passage itself, by distance:", "",
              "| arm | " + " | ".join(f"readback @{d}" for d in distances) + " |",
              "|---|" + "---:|" * len(distances)]
    lines += [f"| {arm} | " + " | ".join(_pm(s["readback"][d]["readback"]) for d in distances)
              + " |" for arm, s in r["arms"].items() if s.get("readback")]
  if "ablation" in studies:
    r = studies["ablation"]
    lines += ["", f"Ablation: validation loss after {r['steps']} steps (nats/byte), and minus "
                  f"{r['first']}'s, seed by seed:", "",
              f"| variant | parameters | loss | bits/byte | minus {r['first']} |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {s['params'] / 1e6:.3f}M | {_pm(s['loss'])} | "
              f"{_pm(s['bits_per_byte'])} | {_pm(s['paired'])} |"
              for n, s in r["variants"].items()]
  lines += ["", "Training time (seconds, all runs of the study) and speed (tokens per second "
                "after the first step):", "", "| arm or variant | study | seconds | tokens/s | "
                "non-finite steps |", "|---|---|---:|---:|---:|"]
  for study, r in studies.items():
    for name, s in (r.get("arms") or r.get("variants")).items():
      lines.append(f"| {name} | {study} | {s['seconds']:.0f} | "
                   f"{s['tokens_per_second']['mean']:,.0f} | {s['nonfinite_steps']} |")
  return "\n".join(lines) + "\n"


def _save(fig, path):
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_all(results: dict, workdir) -> list[str]:
  """Writes the plots that have data; returns their file names."""
  studies = results["studies"]
  written = []
  if "recall" in studies:
    r = studies["recall"]
    fig = Figure(figsize=(4.5 * len(r["settings"]), 3.4))
    for i, setting in enumerate(r["settings"]):
      ax = fig.add_subplot(1, len(r["settings"]), i + 1)
      length, pairs = (int(v) for v in setting.split("x"))
      for arm, s in r["arms"].items():
        acc = s["accuracy"][setting]
        ms = [int(m) for m in acc]
        ax.errorbar([m * length for m in ms], [acc[str(m)]["mean"] for m in ms],
                    yerr=[acc[str(m)]["std"] for m in ms], marker="o", capsize=3, label=arm)
      ax.set_xscale("log", base=2)
      ax.set_xlabel("context (tokens)")
      ax.set_ylabel("recall accuracy")
      ax.set_ylim(0, 1.02)
      ax.set_title(f"MQAR, {pairs} pairs, trained at {length} tokens", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, f"{workdir}/recall.png")
    written.append("recall.png")
  if "repeat" in studies:
    r = studies["repeat"]
    names = list(r["arms"])
    _bars_by_distance(r, names, lambda s, d: s["readings"][d]["gain"],
                      "first - second reading loss (nats/byte)",
                      "repeated passage: what the second reading gains",
                      f"{workdir}/repeat_gain.png")
    written.append("repeat_gain.png")
    with_readback = [n for n in names if r["arms"][n].get("readback")]
    if with_readback:
      _bars_by_distance(r, with_readback, lambda s, d: s["readback"][d]["readback"],
                        "second reading loss after P' - after P (nats/byte)",
                        "repeated passage: readback (symmetric log scale)",
                        f"{workdir}/repeat_readback.png", symlog=0.01)
      written.append("repeat_readback.png")
    fig = Figure(figsize=(6, 3.4))
    ax = fig.add_subplot()
    for n in names:
      curve = np.asarray(r["arms"][n]["by_position"])
      smooth = np.convolve(curve, np.ones(8) / 8, mode="valid")
      ax.plot(np.arange(len(smooth)) + 4, smooth, label=n, linewidth=1)
    for x in (r["passage"], r["passage"] + r["distance"]):
      ax.axvline(x, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("position (passage | filler | passage again)")
    ax.set_ylabel("loss (nats/byte, 8-token mean)")
    ax.set_title(f"loss by position at the training distance {r['distance']}", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, f"{workdir}/repeat_by_position.png")
    written.append("repeat_by_position.png")
  if "ablation" in studies:
    r = studies["ablation"]["variants"]
    names = list(r)
    fig = Figure(figsize=(1.5 + 0.9 * len(names), 3.4))
    ax = fig.add_subplot()
    ax.bar(range(len(names)), [r[n]["loss"]["mean"] for n in names],
           yerr=[r[n]["loss"]["std"] for n in names], capsize=3, color="tab:blue")
    low = min(r[n]["loss"]["mean"] - 2 * r[n]["loss"]["std"] for n in names)
    high = max(r[n]["loss"]["mean"] + 2 * r[n]["loss"]["std"] for n in names)
    ax.set_ylim(low - 0.2 * (high - low + 1e-3), high + 0.2 * (high - low + 1e-3))
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title("HOPE ablated (mean ± std over seeds)", fontsize=9)
    _save(fig, f"{workdir}/ablation.png")
    written.append("ablation.png")
  return written
