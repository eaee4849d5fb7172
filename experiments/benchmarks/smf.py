"""Suite `smf`: a Sparse Memory Finetuning step against the step it adds to.

The fact-injection study's memory LM (experiments/configs/fact_injection.py) with a large,
sparsely read table (TABLE: 4 heads x top-32 of 256^2 slots, 0.2% of the table per token)
on one injection batch (a fact's statements and QA lines, padded to seq_len + 1), one
device, in interleaved rounds:

- "table frozen": every other parameter's gradient and an SGD update of them, the value
  table held fixed (what a step costs without the table's gradient);
- "SMF, row-sparse": `sparse_finetuning.row_sparse_step` (TF-IDF top-t among the distinct
  rows read, SGD scatter-added into the donated table; the study's SMF);
- "SMF, dense": `sparse_finetuning.sparse_step` with optax.sgd (the [N, D] gradient masked
  to the top-t rows; the path of optimizers such as AdamW).

The ratio is each step's median over the frozen one's.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.benchmarks.timing import interleaved_medians, load_average
from experiments.configs import fact_injection
from memory_layers import row_sparse, sparse_finetuning, tfidf
from runtime import facts, models

TABLE = dict(num_slots=256 ** 2, memory_heads=4, top_k=32)
TOP_T = 500
LEARNING_RATE = 1.0


def _masked_ce(logits, tokens, mask):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  return (ce * mask[:, 1:]).sum() / mask[:, 1:].sum()


def step_calls(config) -> dict:
  """{variant: call} on the config's model and one fact batch."""
  model = models.build(config.model.to_dict(), 0)
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  num_slots = config.model.num_slots
  world = facts.make_world(config.facts.seed, config.facts.num_known, config.facts.num_new)
  fact = world.facts(world.new)[0]
  batch = tuple(map(jnp.asarray, facts.padded_batch(
      facts.statements(fact) + facts.qa_lines(fact), config.seq_len)))
  df = jnp.asarray(np.random.default_rng(0).integers(0, 100, num_slots), jnp.int32)
  [path] = row_sparse.table_paths(model)
  rest, tables = row_sparse.split_tables(params, [path])

  def frozen(rest, table, batch):
    tokens, mask = batch
    loss = lambda r: _masked_ce(nnx.merge(graphdef, row_sparse.merge_tables(
        r, {path: table}))(tokens[:, :-1]), tokens, mask)
    grads = jax.grad(loss)(rest)
    return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, rest, grads)

  def loss_of_model(model, batch):
    tokens, mask = batch
    return _masked_ce(model(tokens[:, :-1]), tokens, mask), mask[:, :-1]

  sparse = jax.jit(sparse_finetuning.row_sparse_step(
      loss_of_model, graphdef,
      lambda rows, counts: tfidf.select_rows(rows, counts, df, 100, TOP_T)), donate_argnums=0)
  reads = sparse_finetuning.reading_apply(graphdef, num_slots)
  labels = sparse_finetuning.value_labels(model)
  dense_tx = optax.sgd(LEARNING_RATE)

  def dense_loss(p, batch):
    tokens, mask = batch
    logits, counts = reads(p, tokens[:, :-1], mask[:, :-1])
    return _masked_ce(logits, tokens, mask), counts

  dense = jax.jit(sparse_finetuning.sparse_step(
      dense_loss, labels, lambda c: tfidf.select_slots(c, df, 100, TOP_T), dense_tx))
  dense_state = dense_tx.init(sparse_finetuning.value_tables(params, labels))
  frozen_step = jax.jit(frozen)
  held = {"params": jax.tree.map(jnp.copy, params)}

  def sparse_call():
    held["params"], loss, _ = sparse(held["params"], batch, LEARNING_RATE)
    return loss

  return {"table frozen": lambda: frozen_step(rest, tables[path], batch),
          "SMF, row-sparse": sparse_call,
          "SMF, dense": lambda: dense(params, dense_state, batch)[2]}


def run(*, warmup: int = 2, runs: int = 7, config=None) -> dict:
  """The timings above (`config`: the study's with TABLE by default; smaller for smoke
  tests)."""
  if config is None:
    config = fact_injection.get_config()
    config.model.update(TABLE)
  seconds = interleaved_medians(step_calls(config), warmup, runs)
  base = seconds["table frozen"]
  load = load_average()
  rows = [dict(step=name, ms=1e3 * s, vs_frozen=s / base, load=load)
          for name, s in seconds.items()]
  return dict(model=f"memory_lm, {config.model.num_slots} slots, top-k {config.model.top_k}, "
                    f"{config.model.memory_heads} heads", top_t=TOP_T, rows=rows)


def table(result: dict) -> str:
  lines = [f"{result['model']}; one fact batch, TF-IDF top-{result['top_t']}",
           f"{'':<18}{'ms':>9}{'vs frozen':>11}{'load':>6}"]
  for r in result["rows"]:
    lines.append(f"{r['step']:<18}{r['ms']:>9.1f}{r['vs_frozen']:>10.2f}x{r['load']:>6.1f}")
  return "\n".join(lines)
