"""What multi_frequency costs: a Transformer train step with plain AdamW against the same step
with AdamW per layer at its own period (hope.optimizers.multi_frequency), in one process.

  python -m experiments.optimizer_measure --config=experiments/configs/transformer.py:small

Both steps are compiled, then timed in alternating rounds; the medians and their ratio print.
"""
import copy

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments.benchmarks import train_step
from experiments.benchmarks.timing import interleaved_medians
from experiments.configs import common

CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/transformer.py:small",
                                         "The model config.")
EVERY = flags.DEFINE_list("every", ["1", "2", "4", "8"], "Periods given to the layers in turn "
                          "(layer i gets every[i % len]); embeddings and the head keep 1.")
RUNS = flags.DEFINE_integer("runs", 5, "Timed runs per optimizer (medians reported).")
STEPS_PER_RUN = flags.DEFINE_integer("steps_per_run", 3, "Train steps per timed run.")


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  config, every = CONFIG.value, [int(k) for k in EVERY.value]
  layered = copy.deepcopy(config)
  layered.optimizer = common.layered_optimizer_config(config.model.num_layers, every)
  tokens = np.random.default_rng(0).integers(0, 256, (config.batch_size, config.seq_len + 1),
                                             dtype=np.int32)
  calls = {}
  for name, c in (("adamw", config), ("multi_frequency", layered)):
    run, compiled, state, batch, _ = train_step.compiled_step(c, dict(c.mesh), tokens)

    def steps(compiled=compiled, carry=dict(state=state), batch=batch, mesh=run.mesh):
      with jax.set_mesh(mesh):
        for _ in range(STEPS_PER_RUN.value):
          carry["state"], metrics = compiled(carry["state"], batch)
      return metrics

    calls[name] = steps
  ms = {k: 1e3 * v / STEPS_PER_RUN.value
        for k, v in interleaved_medians(calls, warmup=2, runs=RUNS.value).items()}
  print(f"adamw {ms['adamw']:.1f} ms/step, multi_frequency {ms['multi_frequency']:.1f} ms/step: "
        f"ratio {ms['multi_frequency'] / ms['adamw']:.3f} ({config.model.name}, batch "
        f"{config.batch_size} x seq {config.seq_len}, layer periods {every}, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s))")


if __name__ == "__main__":
  cli.run(main)
