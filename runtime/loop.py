"""The one training loop: a run is a list of phases, trained in order in one workdir.

A phase is a data source (endless batches of [batch, seq_len + 1] tokens, or of (tokens,
loss weights) pairs: `training.loss_fn`), a number of steps
and optionally its own learning-rate schedule. Plain pretraining is one phase; A then B is
two; interleaved training is one phase over a mixture. `train` runs them under one optimizer:

- every step goes through `runtime.training.make_train_step` (the non-finite guard keeps the
  previous state); `NonFiniteGuard` stops the run or skips the step (config.on_nonfinite);
- metrics.jsonl (loss, gradient norm, learning rate), perf.jsonl (steps/s, tokens/s, MFU,
  ETA) and TensorBoard events every config.log_every steps and at each phase's end;
- a checkpoint every config.checkpoint_every steps and at each phase's end (params,
  optimizer state, step, RNG, the data iterator's position and the config; checksummed,
  written atomically). At a phase's end, after `evaluate(params)` has been saved to
  WORKDIR/<phase>.json, the checkpoint holds the next phase's iterator;
- with a continual-learning method (`Trainer(..., method=)`, `runtime.continual`), the
  method's step trains, its state is checkpointed with the rest, and its boundary hooks run
  at the phases' ends and starts (`Phase.context`);
- a rerun resumes from the latest intact checkpoint, in the middle of any phase: a step whose
  files fail their checksums, or that does not restore, is moved to
  WORKDIR/corrupt_checkpoints/ and the one before it is used.
"""
import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from cl_methods.method import ContinualMethod

from hope.optimizers.tree_paths import named_leaves
from runtime import continual, text_data, training
from runtime.checkpoints import (RESTORE_ERRORS, Checkpoints, directory_exists,
                                 does_not_restore)
from runtime.errors import RunStopped, UsageError
from runtime.metrics import MetricsWriter
from runtime.performance import reference_flops
from runtime.workdir import check_workdir, write_json


@dataclasses.dataclass
class Phase:
  """One stretch of training: `steps` steps on batches from `data`; `learning_rate` is the
  phase's schedule of its own step (None: the config's schedule, read at the run's step).

  For a run with a continual-learning method: `context` is the context the phase trains
  (the method's begin_context runs before its first step, end_context after its last, on
  `examples`, sequences [N, seq_len + 1] of that context); -1 signals no context (a
  task-free stream: no hooks run)."""
  name: str
  data: grain.IterDataset
  steps: int
  learning_rate: optax.Schedule | None = None
  context: int = -1
  examples: np.ndarray | None = None


def run_schedule(config, phases: list[Phase]) -> optax.Schedule:
  """The learning rate at each step of the whole run (optax.join_schedules of the phases)."""
  default = training.learning_rate_schedule(config)
  if all(p.learning_rate is None for p in phases):
    return default
  starts = [0, *itertools.accumulate(p.steps for p in phases)][:-1]
  parts = [p.learning_rate or (lambda step, start=start: default(step + start))
           for p, start in zip(phases, starts)]
  return optax.join_schedules(parts, starts[1:])


class Trainer:
  """The compiled pieces of one training setup (optimizer, state shardings, train step,
  initial state), reusable by several runs of the same config and schedule, whatever their
  seeds (the seed is an argument of the initial state, not a constant of the compile).

  With a continual-learning `method` (`runtime.continual`), the state also holds the
  method's state, the step is the method's, and `end_context` / `begin_context` are its
  boundary hooks (None where the method has none, or without a method)."""

  def __init__(self, run: training.Run, schedule: optax.Schedule | None = None,
               method: ContinualMethod | None = None):
    self.run = run
    self.schedule = schedule or training.learning_rate_schedule(run.config)
    self.tx = training.optimizer(run.config, run, self.schedule)
    self.shardings = training.state_shardings(run, self.tx)
    self.method = method and continual.MethodTraining(method, run, self.tx, self.schedule)
    self.end_context = self.begin_context = None
    if self.method is None:
      self.step = training.make_train_step(run, self.tx, self.shardings, self.schedule)
      self._init_fn = lambda seed: training.init_state(run, self.tx, seed)
    else:
      self.shardings = dict(self.shardings, method=self.method.method_shardings)
      self.step = self.method.make_step(self.shardings)
      self.end_context, self.begin_context = self.method.make_hooks(self.shardings)

      def init(seed):
        state = training.init_state(run, self.tx, seed)
        return dict(state, method=self.method.init_state(state["params"]))
      self._init_fn = init
    self._init = jax.jit(self._init_fn, out_shardings=self.shardings)
    self.checkpointed = [k for k in self.shardings if k != "params"]

  def initial_state(self, seed: int | None = None) -> dict:
    """A fresh train state in its shardings (call under jax.set_mesh), initialised from
    `seed` (default: the run's config.seed)."""
    return self._init(jnp.int32(self.run.config.seed if seed is None else seed))

  def abstract_state(self) -> dict:
    shapes = jax.eval_shape(self._init_fn, jnp.int32(0))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, self.shardings)

  def batch(self, local, phase: Phase, phase_start: int):
    """The global batch of this process's part of a step of `phase`."""
    if self.method is not None:
      local = continual.method_batch(local, phase.context, phase_start)
    return training.global_batch(self.run, local)


class NonFiniteGuard:
  """Acts on the train step's `nonfinite` metric: stop, or skip (the step already kept the
  previous state) and stop after too many skips in a row. `skipped` counts every skip."""

  def __init__(self, config, names: list[str]):
    self.skip = config.on_nonfinite == "skip"
    self.max_skips = config.max_consecutive_skips
    self.names = names
    self.skipped_in_a_row = 0
    self.skipped = 0

  def check(self, step: int, metrics: dict) -> None:
    index = int(metrics["nonfinite"])
    if index < 0:
      self.skipped_in_a_row = 0
      return
    what = f"step {step}: {self.names[index]} is not finite"
    if not self.skip:
      raise RunStopped(f"{what}; stopped (config.on_nonfinite='stop'), the parameters are "
                       "those before this step and no checkpoint of it was written")
    self.skipped_in_a_row += 1
    self.skipped += 1
    if self.skipped_in_a_row > self.max_skips:
      raise RunStopped(f"{what}; {self.skipped_in_a_row} non-finite steps in a row, more than "
                       f"config.max_consecutive_skips ({self.max_skips}): stopped")
    logging.warning("%s; step skipped (config.on_nonfinite='skip')", what)


def check_same_model(ckpt: Checkpoints, step: int, run: training.Run) -> None:
  """UsageError unless the checkpoint at `step` holds `run`'s model (fields and shapes)."""
  saved_model = ckpt.config(step).get("model", {})
  wanted = json.loads(json.dumps(run.config.model.to_dict()))  # as saved: tuples are lists
  diffs = [f"model.{k}: {saved_model.get(k)!r} saved, {wanted.get(k)!r} requested"
           for k in sorted(set(saved_model) | set(wanted)) if saved_model.get(k) != wanted.get(k)]
  expected = {name: tuple(x.shape) for name, x in named_leaves(run.abstract_params)}
  if diffs or ckpt.param_shapes(step) != expected:
    detail = "; ".join(diffs[:3]) or "parameter shapes differ"
    raise UsageError(f"--workdir {str(ckpt.directory.parent)!r} holds a checkpoint (step {step}) "
                     f"of a different model ({detail}); use another --workdir")


def resumable_step(directory: Path, run: training.Run) -> tuple[int | None, dict]:
  """(the latest intact checkpoint step of this model or None, {newer step: what is wrong});
  a checkpoint of another model is a UsageError. Reads only."""
  if not directory_exists(directory):
    return None, {}
  ckpt = Checkpoints(directory, read_only=True)
  return ckpt.latest_intact(lambda step: check_same_model(ckpt, step, run))


def restore_latest(ckpt: Checkpoints, trainer: Trainer, step: int | None,
                   iterator_at: Callable[[int], object]) -> tuple[dict | None, object]:
  """(state, iterator) of the latest checkpoint that restores, from `step` down, with
  `iterator_at(step)` set to its saved position; a step that fails is quarantined.
  (None, iterator_at(0)) when none restores."""
  target = trainer.abstract_state()
  while step is not None:
    iterator = iterator_at(step)
    try:
      params, rest = ckpt.restore(step, params=target["params"],
                                  train_state={k: target[k] for k in trainer.checkpointed},
                                  data_iterator=iterator)
      logging.info("resumed from %s at step %d", ckpt.directory, step)
      return dict(params=params, **rest), iterator
    except RESTORE_ERRORS as e:
      ckpt.quarantine(step, does_not_restore(e))
      step, _ = resumable_step(ckpt.directory, trainer.run)
  return None, iterator_at(0)


def train(run: training.Run, phases: list[Phase], workdir, *, trainer: Trainer | None = None,
          evaluate: Callable[[dict], dict] | None = None, label: str = "",
          curve: tuple[int, Callable[[dict], dict]] | None = None) -> tuple[dict, dict]:
  """Trains `run` through `phases` in `workdir` (see the module docstring); returns (the
  final train state, {phase name: its WORKDIR/<phase>.json result} when `evaluate` is given).

  `curve` = (every, fn): after every `every` steps, fn(params) is appended to
  WORKDIR/curves.jsonl (the curves along training; a resumed run rewrites those after its
  checkpoint).

  `run.config.steps` must be the phases' total. `trainer` (built for `run` and
  `run_schedule(run.config, phases)`) lets several runs share one compiled step.
  """
  config = run.config
  ends = list(itertools.accumulate(p.steps for p in phases))
  if ends[-1] != config.steps:
    raise ValueError(f"the phases' steps add up to {ends[-1]}, config.steps is {config.steps}")
  trainer = trainer or Trainer(run, run_schedule(config, phases))
  workdir = check_workdir(workdir)
  resume_step, corrupt = resumable_step(workdir / "checkpoints", run)
  ref_flops, ref_desc = reference_flops(jnp.dtype(config.model.get("dtype", "float32")))
  step_flops = 3 * run.flops_per_token * config.batch_size * config.seq_len
  logging.info("%smodel %s: %.2fM parameters; mesh %s; model FLOPs per step %.3g; utilisation "
               "reference: %s, %.3g FLOP/s", label, config.model.name, run.num_params / 1e6,
               dict(run.mesh.shape), step_flops, ref_desc, ref_flops)

  def phase_at(step: int) -> int:  # the phase that trains step + 1 (the last, at the end)
    return next((i for i, end in enumerate(ends) if end > step), len(phases) - 1)

  ckpt = Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
  for step, problem in sorted(corrupt.items()):
    ckpt.quarantine(step, problem)
  guard = NonFiniteGuard(config, training.nonfinite_names(run))
  results = {}
  with jax.set_mesh(run.mesh):
    state, iterator = restore_latest(ckpt, trainer, resume_step,
                                     lambda step: iter(phases[phase_at(step)].data))
    if state is None:
      state = trainer.initial_state(config.seed)
      if trainer.begin_context is not None and phases[0].context >= 0:
        state = trainer.begin_context(state, phases[0].context)
    start = int(state["step"])
    if evaluate is not None:  # the phases finished before this run: their saved results
      results = {p.name: json.loads((workdir / f"{p.name}.json").read_text())
                 for p in phases[:phase_at(start)] if (workdir / f"{p.name}.json").exists()}
    writer = MetricsWriter(workdir, resume_step=start)
    try:
      timer = None  # (step, time) at the end of the first step, which compiles
      previous = None  # the last step's (step, metrics), checked while this step runs
      for i in range(phase_at(start), len(phases)):
        phase, began, skipped_before = phases[i], time.perf_counter(), guard.skipped
        name = f"{label}{phase.name} " if len(phases) > 1 else label
        for step in range(max(start, ends[i] - phase.steps), ends[i]):
          state, metrics = trainer.step(state, trainer.batch(next(iterator), phase,
                                                             ends[i] - phase.steps))
          done = step + 1
          if previous is not None:
            guard.check(*previous)
          previous = done, metrics
          if timer is None:
            jax.block_until_ready(metrics)
            timer = done, time.perf_counter()
          if curve is not None and done % curve[0] == 0:
            writer.write("curves.jsonl", done, curve[1](state["params"]))
          if done % config.log_every == 0 or done == ends[i]:
            _log(writer, name, done, config, jax.device_get(metrics), timer,
                 step_flops / ref_flops)
          if done % config.checkpoint_every == 0 and done < ends[i]:
            guard.check(*previous)  # a stop never leaves a checkpoint of its step behind
            previous = None
            _save(ckpt, done, state, iterator, config, trainer.checkpointed)
        if previous is not None:
          guard.check(*previous)
          previous = None
        if trainer.end_context is not None and phase.context >= 0 and ends[i] > start:
          state = trainer.end_context(state, phase.examples, phase.context)
        if evaluate is not None:
          out = workdir / f"{phase.name}.json"
          if out.exists():  # evaluated before a crash, not yet checkpointed
            results[phase.name] = json.loads(out.read_text())
          else:
            results[phase.name] = dict(evaluate(state["params"]), steps=phase.steps,
                                       nonfinite_steps=guard.skipped - skipped_before,
                                       seconds=time.perf_counter() - began)
            write_json(out, results[phase.name])
        if i + 1 < len(phases):
          iterator = iter(phases[i + 1].data)  # saved with the step that begins the next phase
          if (trainer.begin_context is not None and phases[i + 1].context >= 0
              and ends[i] > start):
            state = trainer.begin_context(state, phases[i + 1].context)
        if ends[i] > start:
          _save(ckpt, ends[i], state, iterator, config, trainer.checkpointed)
    finally:  # a run that stops still completes the save in flight
      ckpt.wait()
      ckpt.close()
      writer.close()
  return state, results


def _save(ckpt: Checkpoints, step: int, state: dict, iterator, config, keys) -> None:
  ckpt.save(step, params=state["params"], train_state={k: state[k] for k in keys},
            data_iterator=iterator, config=config.to_dict())
  if not config.async_checkpoints:
    ckpt.wait()


def _log(writer: MetricsWriter, name: str, done: int, config, metrics: dict, timer: tuple,
         mfu_per_step_per_sec: float) -> None:
  writer.write("metrics.jsonl", done, {k: v for k, v in metrics.items() if k != "nonfinite"})
  line = f"{name}step {done}/{config.steps} loss {metrics['loss']:.4f}"
  timer_step, timer_start = timer
  if done > timer_step:
    steps_per_sec = (done - timer_step) / (time.perf_counter() - timer_start)
    perf = dict(steps_per_sec=steps_per_sec,
                tokens_per_sec=steps_per_sec * config.batch_size * config.seq_len,
                mfu=steps_per_sec * mfu_per_step_per_sec,
                eta_seconds=(config.steps - done) / steps_per_sec)
    writer.write("perf.jsonl", done, perf)
    line += (f" | {perf['steps_per_sec']:.2f} steps/s {perf['tokens_per_sec']:.0f} tokens/s"
             f" MFU {100 * perf['mfu']:.1f}% ETA {perf['eta_seconds']:.0f}s")
  logging.info(line)


def pretrain(config, workdir) -> dict:
  """Plain pretraining: one phase of config.steps on the corpus of config.data, in `workdir`
  (resuming from its latest intact checkpoint); returns the final train state. A
  model.vocab_size of 256, the byte default, becomes the data's tokenizer's."""
  if config.model.get("vocab_size") == text_data.VOCAB_SIZE:
    config = config.copy_and_resolve_references()
    config.model.vocab_size = text_data.tokenizer_for(config.data.source).vocab_size
  run = training.prepare(config)
  corpus = text_data.load_corpus(config.data.source, config.data.validation_percent)
  dataset = text_data.lm_dataset(corpus.train, seq_len=config.seq_len,
                                 batch_size=config.batch_size, seed=config.seed, shuffle=True,
                                 repeat=True, process_index=jax.process_index(),
                                 process_count=jax.process_count(),
                                 workers=config.data.get("workers", 0))
  logging.info("data: %s", corpus.description)
  state, _ = train(run, [Phase("pretrain", dataset, config.steps)], workdir)
  return state
