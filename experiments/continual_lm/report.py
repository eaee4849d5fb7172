"""The continual-LM grid's summary: per (architecture, method) the mean and standard deviation
over seeds of every boundary metric, the first domain's rise after the second, the
seed-mean loss matrices; a markdown table and the plots."""
from pathlib import Path

import numpy as np

from cl_methods import plots
from experiments.compare.runs import mean_std

METRICS = ("avg_loss", "bwt", "fwt", "forgetting", "learning_loss", "first_domain_rise")


def first_domain_rise(cell: dict) -> float:
  """L[1, 0] - L[0, 0]: how much training on the second domain raised the first's loss."""
  return cell["loss_matrix"][1][0] - cell["loss_matrix"][0][0]


def summarize(cells: list[dict]) -> list[dict]:
  """One row per (architecture, method), in the cells' order."""
  groups = {}
  for cell in cells:
    groups.setdefault((cell["architecture"], cell["method"]), []).append(cell)
  rows = []
  for (architecture, method), group in groups.items():
    row = dict(architecture=architecture, method=method, seeds=[c["seed"] for c in group],
               loss_matrix=np.mean([c["loss_matrix"] for c in group], axis=0).tolist(),
               seconds=mean_std([c["seconds"] for c in group]))
    for name in METRICS:
      values = [first_domain_rise(c) if name == "first_domain_rise" else c[name] for c in group]
      row[name] = mean_std(values)
    rows.append(row)
  return rows


def _cell(stat: dict) -> str:
  if len(stat["values"]) == 1:
    return f"{stat['mean']:.3f}"
  return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def markdown(rows: list[dict], domains: list[str], seconds: float, command: str) -> str:
  lines = [f"Domains, in order: {' -> '.join(domains)}. Losses in nats per byte on each "
           "domain's validation windows; ± is the standard deviation over seeds.", "",
           "| architecture | method | seeds | avg loss | BWT | FWT | forgetting | "
           "learning loss | rise of domain 1 after domain 2 | seconds |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['architecture']} | {r['method']} | {len(r['seeds'])} | "
                 + " | ".join(_cell(r[m]) for m in METRICS)
                 + f" | {r['seconds']['mean']:.0f} |")
  lines += ["", "Loss matrices L[i, j] (after domain i, on domain j; mean over seeds):", ""]
  for r in rows:
    matrix = "; ".join("[" + ", ".join(f"{v:.3f}" for v in row) + "]" for row in r["loss_matrix"])
    lines.append(f"- {r['architecture']} / {r['method']}: {matrix}")
  lines += ["", f"Grid wall time: {seconds:.0f} s. Command: `{command}`", ""]
  return "\n".join(lines)


def write_plots(rows: list[dict], cells: list[dict], domains: list[str], out: Path) -> None:
  """loss_matrix_<arch>_<method>.png per row, forgetting.png and bwt.png over rows, and
  curves_<arch>.png (the first seed's finetune beside joint) per architecture that has both."""
  out.mkdir(parents=True, exist_ok=True)
  everything = np.array([r["loss_matrix"] for r in rows])
  value_range = (float(everything.min()), float(everything.max()))
  for r in rows:
    plots.accuracy_matrix(r["loss_matrix"], str(out / f"loss_matrix_{r['architecture']}_"
                                                   f"{r['method']}.png"),
                          f"{r['architecture']} / {r['method']}: loss L[i, j] (nats/byte)",
                          labels=domains, value_range=value_range, fmt=".2f")
  names = [f"{r['architecture']}/{r['method']}" for r in rows]
  for metric, label in (("forgetting", "forgetting (nats/byte)"), ("bwt", "BWT (nats/byte)")):
    plots.metric_bars(names, [r[metric]["mean"] for r in rows], [r[metric]["std"] for r in rows],
                      str(out / f"{metric}.png"), label, f"{label}, mean ± std over seeds")
  for architecture in dict.fromkeys(r["architecture"] for r in rows):
    pick = {m: next((c for c in cells if c["architecture"] == architecture and c["method"] == m),
                    None) for m in ("finetune", "joint")}
    if pick["finetune"] is None:
      continue
    def series(cell):
      return ([p["step"] for p in cell["curves"]],
              [[p[d] for d in domains] for p in cell["curves"]])
    steps, losses = series(pick["finetune"])
    per_domain = pick["finetune"]["study_config"]["steps_per_domain"]
    boundaries = [per_domain * (i + 1) for i in range(len(domains))]
    plots.accuracy_curves(steps, losses, boundaries, str(out / f"curves_{architecture}.png"),
                          f"{architecture}: finetune, seed {pick['finetune']['seed']}",
                          series(pick["joint"]) if pick["joint"] else None, labels=domains,
                          ylabel="validation loss (nats/byte)", ylim=None)
