"""What multi_frequency costs: a Transformer train step with plain AdamW against the same step
with AdamW per layer at its own period (hope.optimizers.multi_frequency), in one process.

  python -m experiments.optimizer_measure --config=experiments/configs/transformer.py:small

Both steps are compiled first, then timed in alternation (runs x steps_per_run each, so drift
and other load on the machine hit both alike); the medians and their ratio are printed.
"""
import time

import jax
import numpy as np
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from experiments import cli, optimizers, training

CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/transformer.py:small",
                                         "The model config.")
EVERY = flags.DEFINE_list("every", ["1", "2", "4", "8"], "Periods given to the layers in turn "
                          "(layer i gets every[i % len]); embeddings and the head keep 1.")
RUNS = flags.DEFINE_integer("runs", 5, "Timed runs per optimizer (medians reported).")
STEPS_PER_RUN = flags.DEFINE_integer("steps_per_run", 3, "Train steps per timed run.")


def layered_config(config, every: list[int]):
  """config.optimizer with one group per block, block i updated every every[i % len] steps."""
  c = optimizers.default_config()
  c.groups = {f"layer{i}": dict(patterns=(f"blocks/{i}/*",), every=every[i % len(every)])
              for i in range(config.model.num_layers)}
  return c


def state_shardings(run, tx) -> dict:
  """training.state_shardings, with the opt-state shardings from experiments.optimizers (optax's
  tree_map_params, which training uses, cannot follow multi_frequency's masked state)."""
  replicated = NamedSharding(run.mesh, P())
  opt = optimizers.opt_state_shardings(tx, run.abstract_params, run.param_shardings, replicated)
  return dict(params=run.param_shardings, opt_state=opt, step=replicated, rng=replicated)


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  config = CONFIG.value
  every = [int(k) for k in EVERY.value]
  run = training.prepare(config)
  schedule = training.learning_rate_schedule(config)
  txs = {"adamw": training.optimizer(config, run),
         "multi_frequency": optimizers.build(layered_config(config, every), run.abstract_params,
                                             learning_rate=schedule,
                                             weight_decay=config.weight_decay,
                                             grad_clip=config.grad_clip)}
  tokens = np.random.default_rng(0).integers(0, 256, (config.batch_size, config.seq_len + 1),
                                             dtype=np.int32)
  with jax.set_mesh(run.mesh):
    batch = training.global_batch(run, tokens)
    steps, states = {}, {}
    for name, tx in txs.items():
      shardings = state_shardings(run, tx)
      states[name] = training.initial_state(run, tx, shardings)
      step = training.make_train_step(run, tx, shardings)
      steps[name] = step.lower(states[name], batch).compile()
      for _ in range(2):  # warm-up
        states[name], metrics = steps[name](states[name], batch)
      jax.block_until_ready(metrics)
    times = {name: [] for name in txs}
    for _ in range(RUNS.value):
      for name in txs:
        start = time.perf_counter()
        for _ in range(STEPS_PER_RUN.value):
          states[name], metrics = steps[name](states[name], batch)
        jax.block_until_ready(metrics)
        times[name].append((time.perf_counter() - start) / STEPS_PER_RUN.value)
  medians = {name: float(np.median(t)) for name, t in times.items()}
  for name, t in times.items():
    print(f"{name:<16} median {medians[name] * 1e3:8.1f} ms/step   runs "
          f"{' '.join(f'{x * 1e3:.1f}' for x in t)}")
  print(f"multi_frequency / adamw = {medians['multi_frequency'] / medians['adamw']:.3f} "
        f"({config.model.name}, batch {config.batch_size} x seq {config.seq_len}, "
        f"layer periods {every}, {jax.device_count()} {jax.devices()[0].platform} device(s))")


if __name__ == "__main__":
  cli.run(main)
