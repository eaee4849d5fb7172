"""The pieces every compare study shares: an arm's or variant's pretraining config, one
training run in its own folder (scored, skipped when finished, refused when its settings
changed), the command's runs side by side in worker processes (`Workers`), the compiled
functions shared across seeds, the corpora, and mean ± std."""
import concurrent.futures
import dataclasses
import gc
import heapq
import itertools
import json
import multiprocessing
import os
import queue
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from experiments import configs
from runtime import compile_cache, logs, loop, text_data, training
from runtime.errors import UsageError
from runtime.workdir import write_json


def model_spec(config, name: str) -> tuple[str, dict]:
  """(pretraining config file, model overrides) of an arm, or of a HOPE variant in
  config.ablations (the `hope` arm with the variant's overrides)."""
  if name in config.arm_models:
    spec = config.arm_models[name]
    return spec.config, {**config.model.to_dict(), **spec.get("model", {}).to_dict()}
  base, model = model_spec(config, "hope")
  return base, {**model, **config.ablations[name].to_dict()}


def run_config(config, name: str, *, seq_len: int, steps: int, seed: int,
               batch_size: int | None = None,
               learning_rate: float | None = None) -> ml_collections.ConfigDict:
  """The pretraining config of arm or variant `name`: its file at config.shape, the shared
  shape and its overrides, the shared training settings, then this run's length, steps, seed,
  batch size and learning rate (None: the shared settings')."""
  base, model = model_spec(config, name)
  try:
    c = configs.lm_config(base, config.shape)
  except ValueError as e:
    raise UsageError(f"config.shape: {e}") from e
  for key, value in model.items():
    if key == "name" or key not in c.model:
      where = f"ablations.{name}" if name in config.ablations else f"arm_models.{name}.model"
      raise UsageError(f"config.{where}.{key}: {base} has no such model field (it has "
                       f"{sorted(k for k in c.model if k != 'name')})")
    c.model[key] = value
  for key, value in config.train.items():
    c[key] = value
  c.update(seq_len=seq_len, steps=steps, seed=seed, keep_checkpoints=1,
           warmup_steps=min(c.warmup_steps, steps))
  if learning_rate is not None:
    c.learning_rate = learning_rate
  if batch_size is not None:
    c.batch_size = batch_size
  c.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
  return c


_CORPORA = {}


def corpora(config, studies) -> dict:
  """{study: Corpus} for the studies that read text (loaded once per source)."""
  out = {}
  for study in ("repeat", "ablation"):
    if study in studies:
      c = config[study]
      key = (c.source, c.validation_percent)
      if key not in _CORPORA:
        _CORPORA[key] = text_data.load_corpus(c.source, c.validation_percent,
                                              f"config.{study}")
      out[study] = _CORPORA[key]
  return out


_TRAINERS = {}


def trainer(run: training.Run) -> loop.Trainer:
  """One compiled Trainer per training setup, shared by the seeds (the seed is an argument
  of its initial state)."""
  key = json.dumps({k: v for k, v in run.config.to_dict().items() if k != "seed"},
                   sort_keys=True, default=str)
  if key not in _TRAINERS:
    _TRAINERS[key] = loop.Trainer(run)
  return _TRAINERS[key]


_JITTED = {}


def jitted(run: training.Run, what: str, fn):
  """`jax.jit(fn)` once per model and purpose (fn(params, tokens) may retrace per shape)."""
  key = (what, json.dumps(run.config.model.to_dict(), sort_keys=True, default=str))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(fn)
  return _JITTED[key]


def train_run(run: training.Run, data, directory: Path, evaluate, study: str,
              study_config: dict, tokens_per_step: float | None = None) -> dict:
  """One training run of run.config.steps steps on `data` in DIRECTORY, scored by
  `evaluate(params)` into DIRECTORY/<study>.json, with the training speed in tokens per second
  after the first step, which compiles (from perf.jsonl's steps per second times
  `tokens_per_step`, default batch_size x seq_len), the run's config and `study_config` (the
  study's settings that its data and scores depend on). A run that has its scores is not
  repeated; one whose saved settings differ is a UsageError (`finished`)."""
  saved = finished(directory, study, run.config, study_config)
  if saved is not None:
    return saved
  _, results = loop.train(run, [loop.Phase(study, data, run.config.steps)], directory,
                          trainer=trainer(run), evaluate=evaluate,
                          label=f"{'/'.join(directory.parts[-4:])} ")
  perf = (directory / "perf.jsonl").read_text().splitlines() if (
      directory / "perf.jsonl").exists() else []
  per_step = tokens_per_step or run.config.batch_size * run.config.seq_len
  out = dict(results[study], tokens_per_second=json.loads(perf[-1])["steps_per_sec"] * per_step
             if perf else None, config=_settings(run.config),
             study_config=_settings(study_config))
  write_json(directory / f"{study}.json", out)
  return out


def _settings(config) -> dict:
  """A ConfigDict or dict as JSON would store it (tuples as lists)."""
  plain = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  return json.loads(json.dumps(plain, default=str))


def study_settings(section: ml_collections.ConfigDict, *choosing: str) -> dict:
  """A study's config section as its runs' data and scores depend on it: less `steps` and
  `batch_size`, which each run's config records, and the fields `choosing` that pick runs
  (a sweep's rates, the variants)."""
  return {k: v for k, v in section.to_dict().items()
          if k not in ("steps", "batch_size", *choosing)}


def _changed(now: dict, before: dict, prefix: str = "") -> list[str]:
  return sorted(prefix + k for k in set(now) | set(before) if now.get(k) != before.get(k))


def finished(directory: Path, study: str, config: ml_collections.ConfigDict,
             study_config: dict) -> dict | None:
  """The scores DIRECTORY/<study>.json of a finished run (None: not finished, or scored by
  the training loop but not yet recorded with its settings, which `train_run` completes); a
  UsageError naming the changed fields if that run was trained with another run config than
  `config`, or trained or scored with other study settings than `study_config` (runs saved
  before their study settings were recorded are checked on their run config only)."""
  done = directory / f"{study}.json"
  saved = json.loads(done.read_text()) if done.exists() else {}
  if "config" not in saved:
    return None
  changed = _changed(_settings(config), saved["config"])
  if "study_config" in saved:
    changed += _changed(_settings(study_config), saved["study_config"], f"{study}.")
  if changed:
    raise UsageError(f"{done} was trained with other settings ({', '.join(changed)}); use "
                     f"another --workdir, or delete that run's folder")
  return saved


def usable_cores() -> list[int]:
  """The CPU cores this process may run on."""
  if hasattr(os, "sched_getaffinity"):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def worker_count(config) -> int:
  """How many processes train side by side: config.workers, where 0 means one per usable
  CPU core on a CPU backend and 1 on an accelerator. UsageError for more workers than cores,
  or for several workers sharing an accelerator."""
  cores, backend = len(usable_cores()), jax.default_backend()
  if config.workers == 0:
    return cores if backend == "cpu" else 1
  if config.workers > 1 and backend != "cpu":
    raise UsageError(f"config.workers ({config.workers}) trains runs side by side in CPU "
                     f"processes; on {backend} set config.workers=1")
  if config.workers > cores:
    raise UsageError(f"config.workers ({config.workers}) is more than the {cores} CPU cores "
                     f"this process may use")
  return config.workers


def _start_worker(core_groups, pids, verbosity: int, cache: Path | None) -> None:
  pids.put(os.getpid())
  threading.Thread(target=_exit_with_parent, daemon=True).start()
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, core_groups.get())
  logs.quiet_logging(verbosity)
  if cache is not None:
    compile_cache.use(cache)


def _exit_with_parent() -> None:
  """Ends this worker as soon as the command that started it ends, however it ended: a
  killed command's workers would otherwise train on, writing into run folders that a rerun
  resumes at the same time."""
  multiprocessing.parent_process().join()
  os._exit(1)


def _call(job):
  """fn(config, *args), then `release_compiled_near_map_limit`."""
  fn, config, args = job
  try:
    return fn(config, *args)
  finally:
    release_compiled_near_map_limit()


def memory_maps() -> tuple[int, int] | None:
  """(memory mappings of this process, the most the kernel allows one) from Linux's /proc;
  None elsewhere."""
  try:
    limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    with open("/proc/self/maps") as maps:
      return sum(1 for _ in maps), limit
  except (OSError, ValueError):
    return None


def release_compiled_near_map_limit() -> None:
  """Drops this process's compiled programs once they hold half the memory mappings Linux
  allows a process (vm.max_map_count, 65,530 by default): each compiled XLA CPU program holds
  its own (a HOPE recall run about 7,500), and a process at the limit cannot compile. They
  load from the compile cache when needed again."""
  maps = memory_maps()
  if maps is not None and maps[0] > maps[1] // 2:
    _TRAINERS.clear()
    _JITTED.clear()
    jax.clear_caches()
    gc.collect()


@dataclasses.dataclass
class Job:
  """fn(config, *args), queued by `Workers.submit`; `result` is set when it has run."""
  fn: Callable
  args: tuple
  then: Callable[["Job"], None] | None
  result: Any = None
  done: bool = False


class Workers:
  """The training runs of a command, side by side.

  `submit` queues a job fn(config, *args) with its cost; `run` runs every queued job, the
  costliest first, and calls each job's `then(job)` here as soon as it has run, which may
  queue more (a study's next runs that depend on it). With one worker (`worker_count`) the
  jobs run in this process, one after another. With n > 1 they run in n spawned processes,
  each pinned (on Linux) to its own 1/n of the usable cores: the small models of the CPU
  studies keep about one core busy, so two runs side by side on two cores finish sooner than
  two in turn on both. Each fn must be a module-level function and its arguments picklable;
  a worker keeps its compiled steps (`release_compiled_near_map_limit`: while there is room)
  and corpora across its jobs, loads and saves compiled programs in `cache`
  (`runtime.compile_cache`; None: no cache), and exits when this process does, even when it
  is killed. The first job to fail ends every worker at once (the runs they were training
  resume from their last checkpoint on a rerun), drops the jobs not yet started, and raises
  its error here."""

  def __init__(self, config, flops_per_token: dict[str, float] | None = None,
               cache: Path | None = None):
    self.config, self.cache = config, cache
    self.flops_per_token = flops_per_token or {}
    self._queue, self._order = [], itertools.count()

  def cost(self, name: str, run_config) -> float:
    """The forward model FLOPs of the training tokens of a run of arm or variant `name` with
    pretraining config `run_config`, by which the queue orders runs (1 a token for a name
    without FLOPs)."""
    c = run_config
    return self.flops_per_token.get(name, 1.0) * c.steps * c.batch_size * c.seq_len

  def submit(self, fn: Callable, *args, cost: float = 0.0,
             then: Callable[[Job], None] | None = None) -> Job:
    job = Job(fn, args, then)
    heapq.heappush(self._queue, (-cost, next(self._order), job))
    return job

  def _finish(self, job: Job, result) -> None:
    job.result, job.done = result, True
    if job.then is not None:
      job.then(job)

  def run(self) -> None:
    workers = worker_count(self.config)
    if workers <= 1:
      while self._queue:
        job = heapq.heappop(self._queue)[-1]
        self._finish(job, _call((job.fn, self.config, job.args)))
      return
    context = multiprocessing.get_context("spawn")
    core_groups, pids = context.Queue(), context.Queue()
    for group in np.array_split(usable_cores(), workers):
      core_groups.put([int(c) for c in group])
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker,
        initargs=(core_groups, pids, logging.get_verbosity(), self.cache))
    running = {}
    try:
      while self._queue or running:
        while self._queue and len(running) < workers:
          job = heapq.heappop(self._queue)[-1]
          running[pool.submit(_call, (job.fn, self.config, job.args))] = job
        done, _ = concurrent.futures.wait(
            running, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
          self._finish(running.pop(future), future.result())
    except BaseException:
      _kill_workers(pids)
      self._queue.clear()
      raise
    finally:
      pool.shutdown(cancel_futures=True)


def _kill_workers(pids) -> None:
  """SIGKILL every worker that reported its pid to `pids` (the pool then fails its other
  jobs and ends the rest)."""
  while True:
    try:
      pid = pids.get(timeout=1)
    except queue.Empty:
      return
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def costs(every_run: list[dict], timed: list[dict]) -> dict:
  """What the runs cost: non-finite steps and seconds summed over `every_run`, training
  tokens per second (mean ± std) over the `timed` runs that logged a speed."""
  speeds = [r["tokens_per_second"] for r in timed if r.get("tokens_per_second")]
  return dict(nonfinite_steps=sum(r.get("nonfinite_steps", 0) for r in every_run),
              seconds=sum(r["seconds"] for r in every_run),
              tokens_per_second=mean_std(speeds or [0.0]))


def mean_std(values) -> dict:
  """{mean, std (population; 0 for one value), values} of a list of numbers."""
  values = [float(v) for v in values]
  return dict(mean=float(np.mean(values)), std=float(np.std(values)), values=values)
