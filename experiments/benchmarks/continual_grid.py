"""Suite `cl`: wall time of the continual-learning grid (every method x scenario).

Runs what `python -m experiments.continual --config=experiments/configs/continual.py
--config.method=all --workdir=DIR` runs (default protocol: split digits, 5 contexts, MLP
(100, 100), 200 steps per context), in this process, into a temporary folder: data
loading, every run's compiles, training, evaluation, plots and result files. Each run of
the grid compiles its own steps, so every timed run is a full grid as a user meets it;
the warm-up runs only take the process's one-time costs (imports, plotting setup) out.
"""
import contextlib
import io
import tempfile

from experiments.continual import study as continual_runs
from experiments.benchmarks.timing import interleaved_medians, load_average
from experiments.configs import continual


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


def run(*, overrides: dict | None = None, warmup: int = 1, runs: int = 3) -> dict:
  """One row: the grid's median wall seconds and its number of (method, scenario) runs."""
  config = grid_config(overrides)
  pairs, kind, dataset = continual_runs.validate(config)

  def grid():
    contexts = continual_runs.load_contexts(config, kind, dataset)
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
      continual_runs.run_grid(config, contexts, pairs, workdir, "benchmark")

  seconds = interleaved_medians(dict(grid=grid), warmup, runs)["grid"]
  return dict(benchmark=config.benchmark, steps_per_context=config.steps_per_context,
              n_contexts=config.n_contexts, warmup=warmup, runs=runs,
              rows=[dict(pairs=len(pairs), seconds=seconds, seconds_per_pair=seconds / len(pairs),
                         load=load_average())])


def table(result: dict) -> str:
  r = result["rows"][0]
  minutes, seconds = divmod(r["seconds"], 60)
  return (f"Continual-learning grid, {result['benchmark']}, {result['n_contexts']} contexts x "
          f"{result['steps_per_context']} steps: {r['pairs']} (method, scenario) runs in "
          f"{int(minutes)} min {seconds:.1f} s ({r['seconds_per_pair']:.2f} s per run), median of "
          f"{result['runs']} after {result['warmup']} warm-up; load {r['load']:.1f}")
