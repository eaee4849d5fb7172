"""Suite `cl`: wall time of the continual-learning grid (every method x scenario), or of
chosen methods side by side.

The grid runs what `python -m experiments.continual --config=experiments/configs/continual.py
--config.method=all --workdir=DIR` runs (default protocol: split digits, 5 contexts, MLP
(100, 100), 200 steps per context), in this process, into a temporary folder: data
loading, every run's compiles, training, evaluation, plots and result files. Each run of
the grid compiles its own steps, so every timed run is a full grid as a user meets it;
the warm-up runs only take the process's one-time costs (imports, plotting setup) out.

With `methods`, each method runs alone under METHODS_PROTOCOL (split digits, Class-IL, MLP
(400, 400), batch 128, 300 steps per context), the methods timed in interleaved rounds, and
each is reported as a multiple of the first method's time (finetune, say).
"""
import contextlib
import io
import tempfile

from experiments.continual import study as continual_runs
from experiments.benchmarks.timing import interleaved_medians, load_average
from experiments.configs import continual


METHODS_PROTOCOL = {"scenario": "class", "model.hidden": (400, 400), "batch_size": 128,
                    "steps_per_context": 300}


def grid_config(overrides: dict | None = None):
  """The continual config with method=all, then `overrides` ({dotted field: value})."""
  config = continual.get_config()
  config.method = "all"
  for key, value in (overrides or {}).items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _grid_call(config):
  """A call that runs `config`'s whole grid as `experiments.continual` does, into a
  temporary folder (data loading, compiles, training, evaluation, plots, result files)."""
  pairs, kind, dataset = continual_runs.validate(config)

  def grid():
    contexts = continual_runs.load_contexts(config, kind, dataset)
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
      continual_runs.run_grid(config, contexts, pairs, workdir, "benchmark")
  return grid


def run_methods(methods, *, overrides: dict | None = None, warmup: int = 1,
                runs: int = 3) -> dict:
  """Rows per method: its whole run's median wall seconds under METHODS_PROTOCOL (then
  `overrides`), and that time over the first method's."""
  calls = {m: _grid_call(grid_config(dict(METHODS_PROTOCOL, **(overrides or {}), method=m)))
           for m in methods}
  seconds = interleaved_medians(calls, warmup, runs)
  first = seconds[methods[0]]
  return dict(protocol={k: list(v) if isinstance(v, tuple) else v
                        for k, v in METHODS_PROTOCOL.items()},
              overrides=overrides or {}, warmup=warmup, runs=runs,
              rows=[dict(method=m, seconds=s, relative=s / first, load=load_average())
                    for m, s in seconds.items()])


def run(*, methods=(), overrides: dict | None = None, warmup: int = 1, runs: int = 3) -> dict:
  """One row: the grid's median wall seconds and its number of (method, scenario) runs; with
  `methods`, `run_methods`."""
  if methods:
    return run_methods(methods, overrides=overrides, warmup=warmup, runs=runs)
  config = grid_config(overrides)
  pairs = continual_runs.validate(config)[0]
  seconds = interleaved_medians(dict(grid=_grid_call(config)), warmup, runs)["grid"]
  return dict(benchmark=config.benchmark, steps_per_context=config.steps_per_context,
              n_contexts=config.n_contexts, warmup=warmup, runs=runs,
              rows=[dict(pairs=len(pairs), seconds=seconds, seconds_per_pair=seconds / len(pairs),
                         load=load_average())])


def table(result: dict) -> str:
  if "protocol" in result:
    lines = [f"Methods side by side, {result['protocol']}; median of {result['runs']} "
             f"after {result['warmup']} warm-up",
             f"{'method':<22}{'seconds':>9}{'vs first':>10}{'load':>6}"]
    lines += [f"{r['method']:<22}{r['seconds']:>9.2f}{r['relative']:>9.2f}x{r['load']:>6.1f}"
              for r in result["rows"]]
    return "\n".join(lines)
  r = result["rows"][0]
  minutes, seconds = divmod(r["seconds"], 60)
  return (f"Continual-learning grid, {result['benchmark']}, {result['n_contexts']} contexts x "
          f"{result['steps_per_context']} steps: {r['pairs']} (method, scenario) runs in "
          f"{int(minutes)} min {seconds:.1f} s ({r['seconds_per_pair']:.2f} s per run), median of "
          f"{result['runs']} after {result['warmup']} warm-up; load {r['load']:.1f}")
