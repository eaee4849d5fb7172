"""The tables and PNG plots of `experiments.compare` (matplotlib's object API, no pyplot).

* `markdown`: arms x (parameters, LM perplexity, continual A/B perplexities and forgetting,
  interleaved bound, recall accuracy per context, test-time loss first/last piece);
* `plot_all`: lm_perplexity.png, continual.png, recall.png, ttl.png (those with data).
"""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _f(x, digits=2):
  return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
  """Markdown tables of a results.json dict."""
  arms = results["arms"]
  lines = [f"Measured {results['date']} on {results['machine']}; the arms' studies took "
           f"{results['seconds'] / 60:.1f} min in all (this run's wall time "
           f"{results['wall_seconds'] / 60:.1f} min; finished studies are not rerun). "
           f"Command: `{results['command']}`", "",
           "| arm | parameters | LM val ppl | LM bits/byte | A after A | A after B | "
           "forgetting (A ppl +) | B after B | interleaved A | interleaved B |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in arms.items():
    lm, cl = r.get("lm", {}), r.get("continual", {})
    lines.append(
        f"| {name} | {r['params'] / 1e6:.3f}M | {_f(lm.get('perplexity'))} | "
        f"{_f(lm.get('bits_per_byte'), 3)} | {_f(cl.get('a_after_a'))} | "
        f"{_f(cl.get('a_after_b'))} | {_f(cl.get('forgetting_ppl'))} | {_f(cl.get('b_after_b'))} | "
        f"{_f(cl.get('interleaved_a'))} | {_f(cl.get('interleaved_b'))} |")
  contexts = sorted({c for r in arms.values() for c in r.get("recall", {}).get("accuracy", {})},
                    key=int)
  if contexts:
    lines += ["", "Multi-query associative recall accuracy (%) by context:", "",
              "| arm | " + " | ".join(contexts) + " |", "|---|" + "---:|" * len(contexts)]
    for name, r in arms.items():
      acc = r.get("recall", {}).get("accuracy", {})
      lines.append(f"| {name} | " + " | ".join(
          _f(100 * acc[c], 1) if c in acc else "n/a" for c in contexts) + " |")
  if any("ttl" in r for r in arms.values()):
    lines += ["", "Test-time learning: loss (nats/byte) by piece of a long document, state "
              "carried:", "", "| arm | first piece | last piece | mean | first - last |",
              "|---|---:|---:|---:|---:|"]
    for name, r in arms.items():
      t = r.get("ttl")
      if t:
        lines.append(f"| {name} | {_f(t['first_piece'], 3)} | {_f(t['last_piece'], 3)} | "
                     f"{_f(t['mean'], 3)} | {_f(t['first_piece'] - t['last_piece'], 3)} |")
  skipped = {n: r["nonfinite_steps"] for n, r in arms.items() if r.get("nonfinite_steps")}
  if skipped:
    lines += ["", "Training steps with a non-finite loss (skipped by the step's guard): "
              + ", ".join(f"{n} {k}" for n, k in skipped.items())]
  lines += ["", "| arm | seconds |", "|---|---:|"]
  lines += [f"| {name} | {r['seconds']:.0f} |" for name, r in arms.items()]
  return "\n".join(lines) + "\n"


def _save(fig, path):
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_all(results: dict, workdir) -> list[str]:
  """Writes the plots that have data; returns their file names."""
  arms = results["arms"]
  names = list(arms)
  written = []
  if any("lm" in r for r in arms.values()):
    fig = Figure(figsize=(1.2 + 0.8 * len(names), 3.2))
    ax = fig.add_subplot()
    ppl = [arms[n].get("lm", {}).get("perplexity", np.nan) for n in names]
    ax.bar(range(len(names)), ppl, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("validation perplexity (bytes)")
    ax.set_title("language modelling", fontsize=9)
    _save(fig, f"{workdir}/lm_perplexity.png")
    written.append("lm_perplexity.png")
  if any("continual" in r for r in arms.values()):
    keys = [("a_after_a", "A after A"), ("a_after_b", "A after B"), ("b_after_b", "B after B"),
            ("interleaved_a", "A interleaved"), ("interleaved_b", "B interleaved")]
    fig = Figure(figsize=(1.5 + 1.2 * len(names), 3.4))
    ax = fig.add_subplot()
    width = 0.8 / len(keys)
    for j, (k, label) in enumerate(keys):
      ax.bar(np.arange(len(names)) + (j - 2) * width,
             [arms[n].get("continual", {}).get(k, np.nan) for n in names], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("validation perplexity")
    ax.set_title("continual LM: domain A then B, against A and B interleaved", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, f"{workdir}/continual.png")
    written.append("continual.png")
  if any("recall" in r for r in arms.values()):
    fig = Figure(figsize=(5, 3.4))
    ax = fig.add_subplot()
    for n in names:
      acc = arms[n].get("recall", {}).get("accuracy")
      if acc:
        xs = sorted(acc, key=int)
        ax.plot([int(x) for x in xs], [acc[x] for x in xs], marker="o", label=n)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("recall accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("multi-query associative recall", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, f"{workdir}/recall.png")
    written.append("recall.png")
  if any("ttl" in r for r in arms.values()):
    fig = Figure(figsize=(5, 3.4))
    ax = fig.add_subplot()
    for n in names:
      t = arms[n].get("ttl")
      if t:
        ends = (np.arange(len(t["loss_by_piece"])) + 1) * t["piece"]
        ax.plot(ends, t["loss_by_piece"], marker=".", label=n)
    ax.set_xlabel("position in document (end of piece)")
    ax.set_ylabel("loss (nats/byte)")
    ax.set_title("test-time learning: loss by position, state carried", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, f"{workdir}/ttl.png")
    written.append("ttl.png")
  return written
