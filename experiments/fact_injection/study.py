"""The fact-injection study (run by `python -m experiments.fact_injection`): learning new
facts against forgetting old ones, for Sparse Memory Finetuning, full finetuning and LoRA
(Lin et al. 2025, sec. 5, at CPU scale).

1. Pretrain a byte-level memory-layer LM on the known people's facts mixed with generic text
   (`runtime.loop`: checkpointed, resumable), or load it.
2. Background df of its memory slots (`runtime.slot_statistics`).
3. For each method and each setting of its sweep, start from the pretrained weights and
   stream the new people's facts, one fact per step (the batch: that fact's paraphrases,
   padded, padding masked out of the loss and of the slot counts). Then measure
   - learned: QA accuracy on the new facts, asked with held-out question templates;
   - forgot_pct: the relative drop (%) of the same QA accuracy on known people;
   - heldout_nll_delta: the change of the NLL (nats/byte) of held-out generic text.
   QA accuracy ranks candidate answers: the prediction is the attribute value whose bytes
   (" value\\n") have the highest log-likelihood after the question prompt; chance is 1/16.
4. Write results.json and frontier.png (learning against forgetting).
"""
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

from memory_layers import lora, sparse_finetuning, tfidf
from runtime import config_schema, facts, loop, slot_statistics, text_data, training
from runtime.config_schema import Field, Relation, positive_int
from runtime.errors import UsageError
from runtime.workdir import check_workdir, write_json

METHODS = ("smf", "smf_tf", "smf_all", "full", "lora")


_POSITIVE = dict(low=0, low_open=True)
SCHEMA = (
    Field("facts.seed", "int", low=0), positive_int("facts.num_known"),
    positive_int("facts.num_new"), Field("facts.text_fraction", "float", low=0, high=1),
    positive_int("background_batches"), positive_int("background_batch_size"),
    Field("include_qa", "bool"), positive_int("known_eval_people"),
    positive_int("heldout_text_batches"), positive_int("eval_batch"),
    Field("smf.learning_rates", "floats", **_POSITIVE), Field("smf.t", "ints", low=1),
    positive_int("smf.ablation_t"), Field("smf.ablation_lr", "float", **_POSITIVE),
    Field("full.learning_rates", "floats", **_POSITIVE),
    Field("full.weight_decay", "float", low=0),
    Field("lora.ranks", "ints", low=1), Field("lora.alpha", "float", low=0, note="0: the rank"),
    Field("lora.learning_rates", "floats", **_POSITIVE),
    Field("lora.weight_decay", "float", low=0),
    Relation("known_eval_people", "<=", "facts.num_known"),
)


def check_config(config: ml_collections.ConfigDict, run: training.Run) -> int:
  """Validates the study's fields (before any compile); returns the memory table's N."""
  config_schema.check(config, SCHEMA)
  num_slots = slot_statistics.memory_slots(run)
  for t in (*config.smf.t, config.smf.ablation_t):
    try:
      tfidf.check_top_t(t, num_slots, "config.smf.t")
    except ValueError as e:
      raise UsageError(str(e)) from e
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


def qa_set(world: facts.World, people, seq_len: int, held_out: bool = True) -> dict:
  """Every (question, candidate answer) sequence of the people's facts, held-out question
  templates by default.

  tokens [Q * C, length], answer [same] (1 at the answer's target positions), and the index
  of the correct candidate per question [Q]; C = 16 values per attribute.
  """
  rows, starts, correct = [], [], []
  for fact in world.facts(people):
    candidates = facts.ATTRIBUTES[fact.attribute][0]
    for prompt in facts.question_prompts(fact, held_out):
      rows += [facts.encode(f"{prompt} {value}\n") for value in candidates]
      starts += [len(prompt.encode())] * len(candidates)
      correct.append(candidates.index(fact.value))
  length = min(seq_len + 1, -(-max(map(len, rows)) // 8) * 8)  # to a multiple of 8
  tokens, answer = np.zeros((2, len(rows), length), np.int32)
  for i, (ids, start) in enumerate(zip(rows, starts)):
    tokens[i, :len(ids)] = ids[:length]
    answer[i, start - 1:len(ids) - 1] = 1  # tokens[start:] are predicted at [start - 1:]
  return dict(tokens=tokens, answer=answer, correct=np.array(correct),
              candidates=len(facts.ATTRIBUTES["city"][0]))


def token_logprobs(apply, params, tokens):
  """log p(tokens[:, j + 1] | tokens[:, :j + 1]) [batch, seq]."""
  logits = apply(params, tokens[:, :-1])
  return -optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])


class Evaluator:
  """QA accuracy (answer ranking) on new and known people and held-out text NLL."""

  def __init__(self, apply, config, world: facts.World, heldout: np.ndarray):
    self.config = config
    self.new = qa_set(world, world.new, config.seq_len)
    self.known = qa_set(world, world.known[:config.known_eval_people], config.seq_len)
    self.heldout = heldout
    self._scores = jax.jit(lambda p, tokens, answer: (
        token_logprobs(apply, p, tokens) * answer[:, 1:]).sum(-1))
    self._nll = jax.jit(lambda p, tokens: -token_logprobs(apply, p, tokens).mean())

  def accuracy(self, params, qa: dict) -> float:
    n, size = len(qa["tokens"]), self.config.eval_batch
    scores = []
    for i in range(0, n, size):
      tokens, answer = qa["tokens"][i:i + size], qa["answer"][i:i + size]
      pad = size - len(tokens)
      tokens, answer = (np.pad(x, ((0, pad), (0, 0))) for x in (tokens, answer))
      scores.append(np.asarray(self._scores(params, tokens, answer))[:size - pad])
    scores = np.concatenate(scores).reshape(-1, qa["candidates"])
    return float((scores.argmax(-1) == qa["correct"]).mean())

  def __call__(self, params) -> dict:
    nll = np.mean([float(self._nll(params, b)) for b in self.heldout])
    return dict(learned=self.accuracy(params, self.new), known=self.accuracy(params, self.known),
                heldout_nll=float(nll))


# ---------------------------------------------------------------- injection methods


def masked_loss(reads, params, batch):
  """Mean next-token cross-entropy over real target tokens (mask != 0), and the slot reads
  c(i) of the real input tokens."""
  tokens, mask = batch
  logits, counts = reads(params, tokens[:, :-1], mask[:, :-1])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  weights = mask[:, 1:].astype(jnp.float32)
  return (ce * weights).sum() / weights.sum(), counts


def fact_batches(world: facts.World, config) -> list:
  """One batch per new fact: its statements (and training-template QA lines), padded."""
  batches = []
  for fact in world.facts(world.new):
    lines = facts.statements(fact) + (facts.qa_lines(fact) if config.include_qa else [])
    batches.append(facts.padded_batch(lines, config.seq_len))
  return batches


def run_smf(ctx, selection: str, t: int, learning_rate: float) -> dict:
  """Sparse memory finetuning: SGD on the selected value rows only."""
  df, num_batches = ctx["df"]
  select = lambda counts: tfidf.select_slots(counts, jnp.asarray(df), num_batches, t, selection)
  key = ("smf", selection, t)
  if key not in ctx["steps"]:
    loss = lambda p, batch: masked_loss(ctx["reads"], p, batch)
    ctx["steps"][key] = jax.jit(sparse_finetuning.sparse_step(
        loss, ctx["labels"], select, ctx["sgd"]))
  step = ctx["steps"][key]
  params = ctx["params"]
  opt_state = ctx["sgd"].init(sparse_finetuning.value_tables(params, ctx["labels"]))
  opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
  selected = 0
  for batch in ctx["batches"]:
    params, opt_state, _, slots = step(params, opt_state, batch)
    selected += int(slots.sum())
  return dict(params=params, mean_selected=selected / len(ctx["batches"]))


def _adamw(weight_decay):
  return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=weight_decay)


def run_full(ctx, learning_rate: float) -> dict:
  """Full finetuning of every parameter with AdamW."""
  tx = _adamw(ctx["config"].full.weight_decay)
  if "full" not in ctx["steps"]:
    def step(params, opt_state, batch):
      (loss, _), grads = jax.value_and_grad(
          lambda p: masked_loss(ctx["reads"], p, batch), has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss
    ctx["steps"]["full"] = jax.jit(step)
  params = ctx["params"]
  opt_state = tx.init(params)
  opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
  for batch in ctx["batches"]:
    params, opt_state, _ = ctx["steps"]["full"](params, opt_state, batch)
  return dict(params=params)


def run_lora(ctx, rank: int, learning_rate: float) -> dict:
  """LoRA with AdamW; the base weights frozen; returns the merged weights."""
  config = ctx["config"]
  alpha = config.lora.alpha or rank
  tx = _adamw(config.lora.weight_decay)
  base = ctx["params"]
  adapters = lora.init_lora(base, ctx["lora_targets"], rank, jax.random.key(config.seed))
  key = ("lora", rank)
  if key not in ctx["steps"]:
    def step(base, adapters, opt_state, batch):
      (loss, _), grads = jax.value_and_grad(
          lambda a: masked_loss(ctx["reads"], lora.merge_lora(base, a, alpha), batch),
          has_aux=True)(adapters)
      updates, opt_state = tx.update(grads, opt_state, adapters)
      return optax.apply_updates(adapters, updates), opt_state, loss
    ctx["steps"][key] = jax.jit(step)
  opt_state = tx.init(adapters)
  opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
  for batch in ctx["batches"]:
    adapters, opt_state, _ = ctx["steps"][key](base, adapters, opt_state, batch)
  return dict(params=lora.merge_lora(base, adapters, alpha))


def sweep(config) -> list[tuple[str, dict]]:
  """(method, setting) for every row of the study, in order."""
  rows = [("smf", dict(t=t, lr=lr)) for t in config.smf.t for lr in config.smf.learning_rates]
  rows += [("smf_tf", dict(t=config.smf.ablation_t, lr=config.smf.ablation_lr)),
           ("smf_all", dict(lr=config.smf.ablation_lr))]
  rows += [("full", dict(lr=lr)) for lr in config.full.learning_rates]
  rows += [("lora", dict(rank=r, lr=lr)) for r in config.lora.ranks
           for lr in config.lora.learning_rates]
  return rows


def run_setting(ctx, method: str, setting: dict) -> dict:
  if method in ("smf", "smf_tf"):
    selection = "tfidf" if method == "smf" else "tf"
    return run_smf(ctx, selection, setting["t"], setting["lr"])
  if method == "smf_all":
    return run_smf(ctx, "all", 1, setting["lr"])
  if method == "full":
    return run_full(ctx, setting["lr"])
  return run_lora(ctx, setting["rank"], setting["lr"])


# ---------------------------------------------------------------- results


def matched_forgetting(rows: list[dict], learned_before: float) -> dict:
  """Forgetting at matched learning: L* = the lowest of the methods' best `learned`; per
  method, the least forgot_pct among its rows that learned at least L*. The paper's ordering
  (smf < lora < full) is only judged when L* is above the accuracy before injection."""
  methods = [m for m in ("smf", "lora", "full") if any(r["method"] == m for r in rows)]
  level = min(max(r["learned"] for r in rows if r["method"] == m) for m in methods)
  best = {m: min(r["forgot_pct"] for r in rows if r["method"] == m and r["learned"] >= level)
          for m in methods}
  order = sorted(best, key=best.get)
  return dict(learned=level, forgot_pct=best, ordering=" < ".join(order),
              paper_ordering_reproduced=(order == ["smf", "lora", "full"]
                                         if level > learned_before else None))


def plot_frontier(rows: list[dict], baseline: dict, path: Path) -> None:
  """Learned against forgot_pct and against heldout_nll_delta, one colour per method."""
  fig = Figure(figsize=(11, 4.2))
  styles = dict(smf=("tab:green", "o"), smf_tf=("tab:olive", "v"), smf_all=("tab:cyan", "^"),
                full=("tab:red", "s"), lora=("tab:blue", "D"))
  for i, (key, label) in enumerate((("forgot_pct", "known-fact QA accuracy drop (%)"),
                                    ("heldout_nll_delta", "held-out text NLL change (nats/byte)"))):
    ax = fig.add_subplot(1, 2, i + 1)
    for method, (color, marker) in styles.items():
      pts = [r for r in rows if r["method"] == method]
      if pts:
        ax.scatter([r[key] for r in pts], [r["learned"] for r in pts], c=color, marker=marker,
                   label=method, s=30)
        for r in pts:
          ax.annotate(r["setting"], (r[key], r["learned"]), fontsize=5, alpha=0.7)
    ax.axhline(baseline["learned"], color="gray", ls=":", lw=1, label="before injection")
    ax.set_xlabel(label)
    ax.set_ylabel("new-fact QA accuracy (learned)")
    ax.grid(alpha=0.3)
  fig.axes[0].legend(fontsize=7)
  fig.suptitle("Fact injection: learning against forgetting (up and left is better)", fontsize=10)
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=120, bbox_inches="tight")


def study(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the whole study in `workdir`; returns what results.json holds."""
  began = time.perf_counter()
  config_schema.check(config, SCHEMA)
  run = training.prepare(config, mesh_sizes={"data": -1})
  num_slots = check_config(config, run)
  workdir = check_workdir(workdir)
  resume_step, _ = loop.resumable_step(workdir / "checkpoints", run)
  pretrained = resume_step is not None and resume_step >= config.steps
  if pretrained and not (workdir / slot_statistics.ITEM).is_dir():
    slot_statistics.load(workdir, resume_step, num_slots)  # raises, naming the command
  world = facts.make_world(config.facts.seed, config.facts.num_known, config.facts.num_new)

  params = pretrain(config, run, workdir, world)
  if not pretrained:
    stats = slot_statistics.compute(str(workdir), config.background_batches)
    df, num_batches = stats["df"], stats["num_batches"]
  else:
    df, num_batches = slot_statistics.load(workdir, config.steps, num_slots)
  pretrain_seconds = time.perf_counter() - began

  model = nnx.merge(run.graphdef, params)
  reads = sparse_finetuning.reading_apply(run.graphdef, num_slots)
  corpus = text_data.load_corpus(config.data.source, config.data.validation_percent)
  heldout = np.stack(list(text_data.lm_dataset(
      corpus.validation, seq_len=config.seq_len, batch_size=config.batch_size, seed=0,
      shuffle=False, repeat=False))[:config.heldout_text_batches])
  evaluator = Evaluator(run.apply, config, world, heldout)
  ctx = dict(config=config, params=params, df=(df, num_batches), reads=reads, steps={},
             labels=sparse_finetuning.value_labels(model),
             lora_targets=lora.lora_targets(model, tuple(config.lora.targets)),
             sgd=optax.inject_hyperparams(optax.sgd)(learning_rate=0.0),
             batches=[tuple(map(jnp.asarray, b)) for b in fact_batches(world, config)])
  baseline = evaluator(params)
  logging.info("before injection: %s", baseline)

  rows = []
  for method, setting in sweep(config):
    t0 = time.perf_counter()
    out = run_setting(ctx, method, setting)
    scores = evaluator(out.pop("params"))
    row = dict(method=method, setting=" ".join(f"{k}={v:g}" for k, v in setting.items()),
               learned=scores["learned"],
               forgot_pct=100.0 * (baseline["known"] - scores["known"]) / max(baseline["known"],
                                                                               1e-9),
               heldout_nll_delta=scores["heldout_nll"] - baseline["heldout_nll"],
               known=scores["known"], seconds=time.perf_counter() - t0, **out)
    rows.append(row)
    logging.info("%s %s: learned %.3f, forgot %.1f%%, NLL %+.4f (%.0fs)", method,
                 row["setting"], row["learned"], row["forgot_pct"], row["heldout_nll_delta"],
                 row["seconds"])
  results = dict(baseline=baseline, rows=rows, matched=matched_forgetting(rows, baseline["learned"]),
                 facts_injected=len(ctx["batches"]), num_slots=num_slots,
                 background_batches=num_batches, pretrain_seconds=pretrain_seconds,
                 total_seconds=time.perf_counter() - began,
                 qa_metric="answer ranking among 16 candidates (chance 1/16)")
  write_json(workdir / "results.json", results)
  plot_frontier(rows, baseline, workdir / "frontier.png")
  logging.info("matched learning: %s; wrote %s and %s", results["matched"],
               workdir / "results.json", workdir / "frontier.png")
  return results
