"""The fact-injection study (run by `python -m experiments.fact_injection`): learning new
facts against forgetting old ones, for Sparse Memory Finetuning, full finetuning and LoRA
(Lin et al. 2025, sec. 5, at CPU scale), as a stream of injections, over several seeds.

For each seed s (DIR/seed_<s>/):
1. Pretrain a byte-level memory-layer LM on the known people's facts mixed with generic text
   (`runtime.loop`: checkpointed, resumable), or load it; count its background slot
   statistics (`runtime.slot_statistics`).
2. For each method and each setting of its sweep, start from the pretrained weights and
   inject the new people's facts in `stream_batches` sequential batches (`facts_per_step`
   facts a step, 1 as in the paper: their statement paraphrases and training-template QA
   lines, padded and masked; each batch `epochs` times, shuffled). After each batch, QA
   accuracy on every batch's facts gives the accuracy matrix R[i, j] (`cl_methods.metrics`:
   ACC, BWT, forgetting). After the last:
   - learned: ACC, the QA accuracy on all new facts with the question templates trained on;
   - heldout_templates: the same facts asked with templates never trained on;
   - forgot_pct: the relative drop (%) of QA accuracy on known people (trained templates,
     which pretraining taught), and the same drop within the known facts that share
     something with the injected ones (`INTERFERENCE_GROUPS`);
   - heldout_nll_delta: the change of the NLL (nats/byte) of held-out generic text;
   - rewritten: the share of the value table's rows that changed.
   QA accuracy is exact match: greedy decoding after the question's prompt must give the
   value and the end of the line (decided by one teacher-forced forward pass, `Evaluator`).
3. Write DIR/seed_<s>/results.json (a rerun skips a finished seed), then DIR/results.json
   with every metric's mean and standard deviation over seeds, each method's forgetting at
   matched learning (its frontier interpolated at `matched_levels`), DIR/frontier.png and
   DIR/matrices.png (the stream's accuracy matrices).
"""
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cl_methods import metrics as cl_metrics
from memory_layers import lora, row_sparse, sparse_finetuning, tfidf
from runtime import config_schema, facts, loop, slot_statistics, text_data, training
from runtime.config_schema import Field, Relation, positive_int
from runtime.errors import UsageError
from runtime.workdir import check_workdir, write_json

METHODS = ("smf", "smf_tf", "smf_all", "smf_adamw", "full", "lora")
FRONTIER_METHODS = ("smf", "smf_adamw", "lora", "full")
# Bytes per table row element the injection holds at once (the table, its masked gradient
# and two AdamW moments, float32), against the machine's memory.
TABLE_COPIES = 4

_POSITIVE = dict(low=0, low_open=True)
SCHEMA = (
    Field("seeds", "ints", low=0), Field("methods", "names", choices=METHODS),
    Field("facts.seed", "int", low=0),
    positive_int("facts.num_known"), positive_int("facts.num_new"),
    Field("facts.text_fraction", "float", low=0, high=1),
    positive_int("background_batches"), positive_int("background_batch_size"),
    positive_int("stream_batches"), positive_int("epochs"), positive_int("facts_per_step"),
    Field("include_qa", "bool"), positive_int("known_eval_people"),
    positive_int("heldout_text_batches"),
    Field("matched_levels", "floats", low=0, high=1),
    Field("smf.learning_rates", "floats", **_POSITIVE), Field("smf.t", "ints", low=1),
    positive_int("smf.ablation_t"), Field("smf.ablation_lr", "float", **_POSITIVE),
    Field("smf.adamw_t", "ints", low=1), Field("smf.adamw_learning_rates", "floats", **_POSITIVE),
    Field("smf.adamw_weight_decay", "float", low=0),
    Field("full.learning_rates", "floats", **_POSITIVE),
    Field("full.weight_decay", "float", low=0),
    Field("lora.ranks", "ints", low=1), Field("lora.alpha", "float", low=0, note="0: the rank"),
    Field("lora.learning_rates", "floats", **_POSITIVE),
    Field("lora.weight_decay", "float", low=0),
    Relation("known_eval_people", "<=", "facts.num_known"),
    Relation("stream_batches", "<=", "facts.num_new"),
)


def check_config(config: ml_collections.ConfigDict, run: training.Run) -> int:
  """Validates what the schema (checked first) cannot: t against the table, the stream's
  divisions, the table against memory, the world and LoRA's targets (before any compile);
  returns the memory table's N."""
  num_slots = slot_statistics.memory_slots(run)
  for t, field in [*((t, "config.smf.t") for t in config.smf.t),
                   (config.smf.ablation_t, "config.smf.ablation_t"),
                   *((t, "config.smf.adamw_t") for t in config.smf.adamw_t)]:
    try:
      tfidf.check_top_t(t, num_slots, field)
    except ValueError as e:
      raise UsageError(str(e)) from e
  if config.facts.num_new % config.stream_batches:
    raise UsageError(f"config.stream_batches ({config.stream_batches}) must divide "
                     f"config.facts.num_new ({config.facts.num_new}): each batch injects as "
                     "many people")
  per_batch = config.facts.num_new // config.stream_batches * len(facts.ATTRIBUTES)
  if per_batch % config.facts_per_step:
    raise UsageError(f"config.facts_per_step ({config.facts_per_step}) must divide the "
                     f"{per_batch} facts of a stream batch")
  table = num_slots * config.model.dim * 4 * TABLE_COPIES
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if table > memory / 2:
    raise UsageError(f"config.model.num_slots ({num_slots}) does not fit: the table, its "
                     f"gradient and AdamW moments take {table / 2 ** 30:.1f} GiB, more than "
                     f"half of this machine's {memory / 2 ** 30:.1f} GiB")
  try:
    world = facts.make_world(config.facts.seed, config.facts.num_known, config.facts.num_new)
    lora.lora_targets(nnx.merge(run.graphdef, run.abstract_params), tuple(config.lora.targets))
  except ValueError as e:
    raise UsageError(f"config: {e}") from e
  longest = max(len(s) for f in world.facts(world.new) for s in facts.statements(f))
  if longest + 1 > config.seq_len + 1:
    raise UsageError(f"config.seq_len ({config.seq_len}) is shorter than the longest "
                     f"statement ({longest + 1} bytes)")
  return num_slots


# ---------------------------------------------------------------- pretraining


def pretrain(config, run: training.Run, workdir: Path, world: facts.World) -> dict:
  """Trains on the fact/text mixture up to config.steps in `workdir` (`runtime.loop`,
  resuming); returns the final parameters on the host."""
  corpus = text_data.load_corpus(config.data.source, config.data.validation_percent)
  dataset = facts.mixture_dataset(world, corpus.train, seq_len=config.seq_len,
                                  batch_size=config.batch_size,
                                  text_fraction=config.facts.text_fraction, seed=config.seed)
  state, _ = loop.train(run, [loop.Phase("pretrain", dataset, config.steps)], workdir)
  return jax.device_get(state["params"])


# ---------------------------------------------------------------- evaluation


def qa_set(world: facts.World, people, held_out: bool) -> dict:
  """Every question about the people's facts, with the held-out or the training question
  templates, in the order of `world.facts(people)`: `qa_batch` of the prompts and their
  expected answers " value\\n", and facts [Q], each question's fact."""
  questions = [(fact, prompt) for fact in world.facts(people)
               for prompt in facts.question_prompts(fact, held_out)]
  return dict(**qa_batch([facts.encode(prompt) for _, prompt in questions],
                         [facts.encode(f" {fact.value}\n") for fact, _ in questions]),
              facts=[fact for fact, _ in questions])


def qa_batch(prompts: list[np.ndarray], answers: list[np.ndarray]) -> dict:
  """tokens [Q, L]: each prompt followed by its answer, zero-padded; answer_mask [Q, L]: True
  on the answer's places."""
  ends = [len(p) + len(a) for p, a in zip(prompts, answers)]
  tokens = np.zeros((len(prompts), max(ends)), np.int32)
  answer_mask = np.zeros(tokens.shape, bool)
  for row, mask, prompt, answer, end in zip(tokens, answer_mask, prompts, answers, ends):
    row[:end] = np.concatenate([prompt, answer])
    mask[len(prompt):end] = True
  return dict(tokens=tokens, answer_mask=answer_mask)


# Known-fact groups by what they share with the injected facts: the person's first or last
# name, or the fact's value (the same value of the same attribute).
INTERFERENCE_GROUPS = ("shared_name", "other_name", "value_injected", "value_not_injected")


def interference_groups(world: facts.World, qa: dict) -> dict:
  """{group: [Q] bool} over the questions of `qa` (a qa_set of known people)."""
  first, last = {p.split()[0] for p in world.new}, {p.split()[1] for p in world.new}
  values = {(f.attribute, f.value) for f in world.facts(world.new)}
  name = np.array([f.person.split()[0] in first or f.person.split()[1] in last
                   for f in qa["facts"]])
  value = np.array([(f.attribute, f.value) in values for f in qa["facts"]])
  return dict(zip(INTERFERENCE_GROUPS, (name, ~name, value, ~value)))


class Evaluator:
  """QA on the new people (trained and held-out templates) and on known people (trained
  templates), and the NLL of held-out text.

  A question is answered correctly when greedy decoding after its prompt gives exactly the
  value and the end of the line (" value\\n"); the paper's metric (Lin et al. 2025: F1 of the
  generated answer) for one-word answers. Greedy decoding gives the answer a_1..a_m after the
  prompt x exactly when a_i = argmax_v p(v | x, a_<i) for every i, so one teacher-forced
  forward pass over prompt and answer decides it (no token-by-token decoding)."""

  def __init__(self, run: training.Run, config, world: facts.World, heldout: np.ndarray):
    self.config = config
    self.new = qa_set(world, world.new, held_out=False)
    self.new_heldout = qa_set(world, world.new, held_out=True)
    self.known = qa_set(world, world.known[:config.known_eval_people], held_out=False)
    self.groups = interference_groups(world, self.known)
    self.heldout = heldout

    def exact(params, tokens, answer_mask):
      greedy = jnp.argmax(run.apply(params, tokens[:, :-1]), axis=-1)
      return jnp.all((greedy == tokens[:, 1:]) | ~answer_mask[:, 1:], axis=1)

    self._exact = jax.jit(exact)
    self._nll = jax.jit(lambda p, tokens: optax.softmax_cross_entropy_with_integer_labels(
        run.apply(p, tokens[:, :-1]), tokens[:, 1:]).mean())

  def correct(self, params, qa: dict) -> np.ndarray:
    """[Q] bool: whether greedy decoding answers each question exactly."""
    return np.asarray(self._exact(params, qa["tokens"], qa["answer_mask"]))

  def per_batch(self, params) -> np.ndarray:
    """[stream_batches]: trained-template QA accuracy on each stream batch's people."""
    return self.correct(params, self.new).reshape(self.config.stream_batches, -1).mean(1)

  def known_accuracy(self, params) -> dict:
    """QA accuracy on the known people, overall ("known") and in each interference group
    ("known_<group>"; None for an empty group)."""
    correct = self.correct(params, self.known)
    return dict(known=float(correct.mean()),
                **{f"known_{g}": float(correct[m].mean()) if m.any() else None
                   for g, m in self.groups.items()})

  def final(self, params) -> dict:
    return dict(heldout_templates=float(self.correct(params, self.new_heldout).mean()),
                **self.known_accuracy(params),
                heldout_nll=float(np.mean([float(self._nll(params, b)) for b in self.heldout])))


# ---------------------------------------------------------------- injection methods


def masked_loss(reads, params, batch):
  """Mean next-token cross-entropy over real target tokens (mask != 0), and the slot reads
  c(i) of the real input tokens."""
  tokens, mask = batch
  logits, counts = reads(params, tokens[:, :-1], mask[:, :-1])
  return _masked_ce(logits, tokens, mask), counts


def _masked_ce(logits, tokens, mask):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  weights = mask[:, 1:].astype(jnp.float32)
  return (ce * weights).sum() / weights.sum()


def stream(world: facts.World, config) -> list[list]:
  """The injection: stream_batches lists of per-fact (tokens, mask) arrays (its statements
  and, with include_qa, its training-template QA lines, padded; on the device), people in
  order."""
  batches = []
  for fact in world.facts(world.new):
    lines = facts.statements(fact) + (facts.qa_lines(fact) if config.include_qa else [])
    batches.append(tuple(map(jnp.asarray, facts.padded_batch(lines, config.seq_len))))
  per = len(batches) // config.stream_batches
  return [batches[i * per:(i + 1) * per] for i in range(config.stream_batches)]


def steps_of_epoch(facts_b: list, facts_per_step: int, rng: np.random.Generator):
  """One epoch over a stream batch: its facts shuffled, `facts_per_step` of them a step
  (their lines stacked into one batch)."""
  order = rng.permutation(len(facts_b))
  for group in order.reshape(-1, facts_per_step):
    tokens, mask = zip(*(facts_b[i] for i in group))
    yield jnp.concatenate(tokens), jnp.concatenate(mask)


def _adamw(weight_decay):
  return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=weight_decay)


def injector(ctx: dict, method: str, setting: dict):
  """(start, step, params_of) for one method and setting: start(pretrained params) -> state,
  step(state, fact batch) -> state, params_of(state) -> the model's parameters. The compiled
  steps are kept in ctx["steps"] and shared by every setting of a method (the learning rate
  is an argument or optimizer state, not a constant)."""
  config, steps, reads = ctx["config"], ctx["steps"], ctx["reads"]
  lr = jnp.asarray(setting["lr"], jnp.float32)
  df, num_batches = jnp.asarray(ctx["df"][0]), ctx["df"][1]

  def compiled(key, build):
    if key not in steps:
      steps[key] = build()
    return steps[key]

  def with_lr(opt_state):
    opt_state.hyperparams["learning_rate"] = lr
    return opt_state

  if method in ("smf", "smf_tf", "smf_all"):  # SGD on row-sparse gradients
    selection, t = dict(smf="tfidf", smf_tf="tf", smf_all="all")[method], setting.get("t", 1)

    def loss_of_model(model, batch):
      tokens, mask = batch
      return _masked_ce(model(tokens[:, :-1]), tokens, mask), mask[:, :-1]

    step = compiled(("row_sparse", selection, t), lambda: jax.jit(
        sparse_finetuning.row_sparse_step(
            loss_of_model, ctx["graphdef"],
            lambda rows, c: tfidf.select_rows(rows, c, df, num_batches, t, selection)),
        donate_argnums=0))
    return (lambda params: jax.tree.map(jnp.copy, params),  # the copy is donated
            lambda params, batch: step(params, batch, lr)[0], lambda params: params)

  if method == "smf_adamw":  # AdamW on the table's masked (dense) gradient
    tx, t = _adamw(config.smf.adamw_weight_decay), setting["t"]
    step = compiled(("smf_adamw", t), lambda: jax.jit(sparse_finetuning.sparse_step(
        lambda p, batch: masked_loss(reads, p, batch), ctx["labels"],
        lambda c: tfidf.select_slots(c, df, num_batches, t), tx)))
    return (lambda params: (params, with_lr(tx.init(
                sparse_finetuning.value_tables(params, ctx["labels"])))),
            lambda state, batch: step(*state, batch)[:2], lambda state: state[0])

  if method == "full":  # AdamW on every parameter
    tx = _adamw(config.full.weight_decay)

    def build():
      def step(params, opt_state, batch):
        grads = jax.grad(lambda p: masked_loss(reads, p, batch)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state
      return jax.jit(step)

    step = compiled(("full",), build)
    return (lambda params: (params, with_lr(tx.init(params))),
            lambda state, batch: step(*state, batch), lambda state: state[0])

  # LoRA with AdamW on the adapters; the base frozen; params_of merges them.
  rank = setting["rank"]
  alpha = config.lora.alpha or rank
  tx = _adamw(config.lora.weight_decay)

  def build():
    def step(base, adapters, opt_state, batch):
      grads = jax.grad(lambda a: masked_loss(reads, lora.merge_lora(base, a, alpha),
                                             batch)[0])(adapters)
      updates, opt_state = tx.update(grads, opt_state, adapters)
      return optax.apply_updates(adapters, updates), opt_state
    return jax.jit(step)

  step = compiled(("lora", rank), build)

  def start(base):
    adapters = lora.init_lora(base, ctx["lora_targets"], rank, jax.random.key(config.seed))
    return base, adapters, with_lr(tx.init(adapters))

  return (start, lambda state, batch: (state[0], *step(*state, batch)),
          lambda state: lora.merge_lora(state[0], state[1], alpha))


def sweep(config) -> list[tuple[str, dict]]:
  """(method, setting) for every row of the study, in order, for the methods that
  config.methods names."""
  smf = config.smf
  rows = [("smf", dict(t=t, lr=lr)) for t in smf.t for lr in smf.learning_rates]
  rows += [("smf_tf", dict(t=smf.ablation_t, lr=smf.ablation_lr)),
           ("smf_all", dict(lr=smf.ablation_lr))]
  rows += [("smf_adamw", dict(t=t, lr=lr)) for t in smf.adamw_t
           for lr in smf.adamw_learning_rates]
  rows += [("full", dict(lr=lr)) for lr in config.full.learning_rates]
  rows += [("lora", dict(rank=r, lr=lr)) for r in config.lora.ranks
           for lr in config.lora.learning_rates]
  chosen = config_schema.split_names(config.methods)
  return [(method, setting) for method, setting in rows if method in chosen]


def setting_name(setting: dict) -> str:
  return " ".join(f"{k}={v:g}" for k, v in setting.items())


def inject(ctx: dict, method: str, setting: dict, evaluator: Evaluator, baseline: dict,
           seed: int) -> dict:
  """One row: the stream injected with (method, setting), its matrix and final metrics."""
  began = time.perf_counter()
  config, batches = ctx["config"], ctx["stream"]
  start, step, params_of = injector(ctx, method, setting)
  state = start(ctx["params"])
  matrix = []
  for b, facts_b in enumerate(batches):
    for epoch in range(config.epochs):
      for batch in steps_of_epoch(facts_b, config.facts_per_step,
                                  np.random.default_rng([seed, b, epoch])):
        state = step(state, batch)
    matrix.append(evaluator.per_batch(params_of(state)))
  params = params_of(state)
  final = evaluator.final(params)
  matrix = np.array(matrix)
  summary = cl_metrics.summarize(matrix, np.array(baseline["per_batch"]))
  return dict(method=method, setting=setting_name(setting), seed=seed,
              learned=summary["acc"], bwt=summary["bwt"], forgetting=summary["forgetting"],
              heldout_templates=final["heldout_templates"], known=final["known"],
              **{f"forgot_pct{suffix}": drop_pct(baseline[f"known{suffix}"],
                                                 final[f"known{suffix}"])
                 for suffix in ("", *(f"_{g}" for g in INTERFERENCE_GROUPS))},
              heldout_nll_delta=final["heldout_nll"] - baseline["heldout_nll"],
              rewritten=rewritten_share(ctx["params"], params, ctx["table_path"]),
              matrix=matrix.tolist(), seconds=time.perf_counter() - began)


def drop_pct(before: float | None, after: float | None) -> float | None:
  """The relative drop (%) from before to after; None for an empty group."""
  return None if before is None else 100.0 * (before - after) / max(before, 1e-9)


def rewritten_share(before: dict, after: dict, path) -> float:
  """The share of the value table's rows that differ."""
  old, new = (np.asarray(row_sparse.get_path(p, path)) for p in (before, after))
  return float(np.any(old != new, axis=1).mean())


# ---------------------------------------------------------------- results


def forgetting_at(points: list[tuple[float, float]], level: float,
                  start: tuple[float, float]) -> float | None:
  """A method's forgetting where its frontier reaches `level` of learning: the linear
  interpolation, along the settings not dominated by another (more learned and less
  forgotten), between the two that bracket `level`; `start` (the accuracy before injection,
  no forgetting) is the frontier's first point. None when no setting learns `level`."""
  frontier = []
  for learned, forgot in sorted([start, *points], key=lambda p: (p[0], -p[1])):
    while frontier and frontier[-1][1] >= forgot:
      frontier.pop()
    frontier.append((learned, forgot))
  if level <= start[0]:
    return 0.0
  for (l0, f0), (l1, f1) in zip(frontier, frontier[1:]):
    if l0 <= level <= l1:
      return f0 + (f1 - f0) * (level - l0) / max(l1 - l0, 1e-12)
  return None


def mean_std(values) -> dict:
  values = [v for v in values if v is not None]
  if not values:
    return dict(mean=None, std=None, n=0)
  return dict(mean=float(np.mean(values)), std=float(np.std(values, ddof=1))
              if len(values) > 1 else 0.0, n=len(values))


def summarize(seed_results: list[dict], levels) -> dict:
  """Every (method, setting)'s metrics as mean and std over seeds; each frontier method's
  forgetting at matched learning (per seed, then over seeds) and its best learning."""
  keys = ("learned", "heldout_templates", "forgot_pct", "heldout_nll_delta", "bwt",
          "forgetting", "rewritten", "seconds",
          *(f"forgot_pct_{g}" for g in INTERFERENCE_GROUPS))
  rows = {}
  for result in seed_results:
    for row in result["rows"]:
      rows.setdefault((row["method"], row["setting"]), []).append(row)
  table = [dict(method=m, setting=s, **{k: mean_std([r[k] for r in rs]) for k in keys},
                matrix=np.mean([r["matrix"] for r in rs], axis=0).tolist())
           for (m, s), rs in rows.items()]
  matched = {}
  for method in FRONTIER_METHODS:
    per_seed = [[(r["learned"], r["forgot_pct"]) for r in res["rows"] if r["method"] == method]
                for res in seed_results]
    if not any(per_seed):
      continue
    starts = [(res["baseline"]["learned"], 0.0) for res in seed_results]
    matched[method] = dict(
        best_learned=mean_std([max(l for l, _ in pts) for pts in per_seed if pts]),
        **{f"forgot_pct_at_{level:g}": mean_std([forgetting_at(pts, level, start)
                                                 for pts, start in zip(per_seed, starts)])
           for level in levels})
  baseline = {k: mean_std([res["baseline"][k] for res in seed_results])
              for k in ("learned", "known", "heldout_nll")}
  return dict(rows=table, matched=matched, baseline=baseline)


def plot_frontier(summary: dict, path: Path) -> None:
  """Learned against forgot_pct and against heldout_nll_delta (means, std error bars)."""
  fig = Figure(figsize=(11, 4.2))
  styles = dict(smf=("tab:green", "o"), smf_tf=("tab:olive", "v"), smf_all=("tab:cyan", "^"),
                smf_adamw=("tab:purple", "P"), full=("tab:red", "s"), lora=("tab:blue", "D"))
  for i, (key, label) in enumerate((("forgot_pct", "known-fact QA accuracy drop (%)"),
                                    ("heldout_nll_delta", "held-out text NLL change (nats/byte)"))):
    ax = fig.add_subplot(1, 2, i + 1)
    for method, (color, marker) in styles.items():
      pts = [r for r in summary["rows"] if r["method"] == method]
      if pts:
        ax.errorbar([r[key]["mean"] for r in pts], [r["learned"]["mean"] for r in pts],
                    xerr=[r[key]["std"] for r in pts], yerr=[r["learned"]["std"] for r in pts],
                    color=color, marker=marker, ls="none", ms=5, capsize=2, label=method)
    ax.axhline(summary["baseline"]["learned"]["mean"], color="gray", ls=":", lw=1,
               label="before injection")
    ax.set_xlabel(label)
    ax.set_ylabel("new-fact QA accuracy (learned)")
    ax.grid(alpha=0.3)
  fig.axes[0].legend(fontsize=7)
  fig.suptitle("Fact injection: learning against forgetting, mean and std over seeds "
               "(up and left is better)", fontsize=10)
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_matrices(summary: dict, path: Path) -> None:
  """The stream's accuracy matrix R[i, j] (mean over seeds) of each method's most learned
  setting: row i after stream batch i, column j the QA accuracy on batch j."""
  best = {}
  for row in summary["rows"]:
    if (row["method"] not in best
        or row["learned"]["mean"] > best[row["method"]]["learned"]["mean"]):
      best[row["method"]] = row
  columns = min(3, len(best))
  rows = -(-len(best) // columns)
  fig = Figure(figsize=(3.4 * columns, 3.6 * rows), layout="constrained")
  for i, (method, row) in enumerate(best.items()):
    ax = fig.add_subplot(rows, columns, i + 1)
    matrix = np.array(row["matrix"])
    ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for (r, c), value in np.ndenumerate(matrix):
      ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8,
              color="black" if value > 0.5 else "white")
    ax.set_title(f"{method} {row['setting']}\nACC {row['learned']['mean']:.2f}", fontsize=9)
    ax.set_xlabel("QA on batch j")
    ax.set_ylabel("after batch i")
    ax.set_xticks(range(len(matrix)))
    ax.set_yticks(range(len(matrix)))
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=120, bbox_inches="tight")


# ---------------------------------------------------------------- the study


def run_seed(config: ml_collections.ConfigDict, seed: int, workdir: Path, world: facts.World,
             num_slots: int, evaluator: Evaluator) -> dict:
  """Steps 1-2 for one seed in `workdir` (the seed's folder); returns its results."""
  config = config.copy_and_resolve_references()
  config.seed = seed
  run = training.prepare(config, mesh_sizes={"data": -1})
  resume_step, _ = loop.resumable_step(workdir / "checkpoints", run)
  pretrained = resume_step is not None and resume_step >= config.steps
  began = time.perf_counter()
  params = pretrain(config, run, workdir, world)
  if pretrained and (workdir / slot_statistics.ITEM).is_dir():
    df, num_batches = slot_statistics.load(workdir, config.steps, num_slots)
  else:
    stats = slot_statistics.compute(str(workdir), config.background_batches)
    df, num_batches = stats["df"], stats["num_batches"]
  pretrain_seconds = time.perf_counter() - began

  model = nnx.merge(run.graphdef, params)
  reads = sparse_finetuning.reading_apply(run.graphdef, num_slots)
  [table_path] = row_sparse.table_paths(model)
  ctx = dict(config=config, params=params, df=(df, num_batches), reads=reads, steps={},
             graphdef=run.graphdef, labels=sparse_finetuning.value_labels(model),
             lora_targets=lora.lora_targets(model, tuple(config.lora.targets)),
             stream=stream(world, config), table_path=table_path)
  per_batch = evaluator.per_batch(params)
  baseline = dict(per_batch=per_batch.tolist(), learned=float(per_batch.mean()),
                  **evaluator.final(params))
  diagnostics = table_diagnostics(config, reads, params, num_slots)
  logging.info("seed %d before injection: %s; %s", seed, baseline, diagnostics)
  rows = []
  for method, setting in sweep(config):
    rows.append(inject(ctx, method, setting, evaluator, baseline, seed))
    r = rows[-1]
    logging.info("seed %d %s %s: learned %.3f (held-out templates %.3f), forgot %.1f%%, "
                 "NLL %+.4f, rewrote %.2f%% of rows (%.0fs)", seed, method, r["setting"],
                 r["learned"], r["heldout_templates"], r["forgot_pct"], r["heldout_nll_delta"],
                 100 * r["rewritten"], r["seconds"])
  return dict(seed=seed, baseline=baseline, diagnostics=diagnostics, rows=rows,
              pretrain_seconds=pretrain_seconds)


def table_diagnostics(config, reads, params, num_slots: int) -> dict:
  """How sparsely the table is read: per token (heads x top-k of N, per memory layer) and by
  one pretraining batch of config.batch_size sequences."""
  batch = next(iter(slot_statistics.pretraining_batches(config, config.seed + 2,
                                                        config.batch_size)))
  tokens = jnp.asarray(batch[:, :-1])
  counts = jax.jit(reads)(params, tokens, jnp.ones(tokens.shape, jnp.int32))[1]
  model = config.model
  return dict(num_slots=num_slots,
              read_share_per_token=model.memory_heads * model.top_k / num_slots,
              read_share_per_batch=float((np.asarray(counts) > 0).mean()))


def study(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the whole study in `workdir`; returns what results.json holds."""
  began = time.perf_counter()
  config_schema.check(config, SCHEMA)   # before prepare reads the model's fields
  run = training.prepare(config, mesh_sizes={"data": -1})
  num_slots = check_config(config, run)
  workdir = check_workdir(workdir)
  world = facts.make_world(config.facts.seed, config.facts.num_known, config.facts.num_new)
  corpus = text_data.load_corpus(config.data.source, config.data.validation_percent)
  heldout = np.stack(list(text_data.lm_dataset(
      corpus.validation, seq_len=config.seq_len, batch_size=config.batch_size, seed=0,
      shuffle=False, repeat=False))[:config.heldout_text_batches])
  evaluator = Evaluator(run, config, world, heldout)   # compiled once for every seed
  seed_results = []
  for seed in config.seeds:
    folder = workdir / f"seed_{seed}"
    done = folder / "results.json"
    if done.exists() and json.loads(done.read_text()).get("config") == config.to_json():
      seed_results.append(json.loads(done.read_text()))
      continue
    folder.mkdir(exist_ok=True)
    result = run_seed(config, seed, folder, world, num_slots, evaluator)
    result["config"] = config.to_json()
    write_json(done, result)
    seed_results.append(result)
  summary = summarize(seed_results, config.matched_levels)
  results = dict(**summary, seeds=list(config.seeds), facts_injected=len(world.facts(world.new)),
                 stream_batches=config.stream_batches, epochs=config.epochs,
                 diagnostics=[r["diagnostics"] for r in seed_results],
                 pretrain_seconds=[r["pretrain_seconds"] for r in seed_results],
                 total_seconds=time.perf_counter() - began,
                 qa_metric="exact match of the greedy answer")
  write_json(workdir / "results.json", results)
  plot_frontier(summary, workdir / "frontier.png")
  plot_matrices(summary, workdir / "matrices.png")
  logging.info("matched learning: %s; wrote %s and %s", summary["matched"],
               workdir / "results.json", workdir / "frontier.png")
  return results
