"""The repeated-passage study: is a passage read once remembered one distance later?

Every arm trains (repeat.steps steps, one run per seed) on sequences P | F | P of the
training corpus (`runtime.repeat`: passage P of repeat.passage bytes, filler F of
repeat.distance bytes, longer than any arm's attention window). Each run is then scored on
validation text: for every distance in repeat.eval_distances (the training distance and
beyond), the mean next-token loss over the first and the second reading of P, in one forward
pass, and the second reading's loss when another passage came first (`readback`: how much
the model uses what it read of the passage); and, at the training distance, the loss at
every position of the sequence. For the
Titans arms whose memory reads the block's input (LMM, MAG, MAL) it also records the learned
gates on those sequences (`memory_gates`): what a memory does with a passage depends on how
fast it writes (theta) and how fast it forgets (alpha); and how often its inner-gradient
clip binds (`inner_clips`). For HOPE (self-modifying memories) it records the same kind of
read-out of its inner rule (`self_modifying_gates`). For both, whether the memory's state
holds the passage when its second reading starts (`passage_memory`).
"""
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from experiments.compare import runs
from hope.self_modifying import SelfModifyingMemory, memory_apply
from hope.titans import TitansMixer
from runtime import repeat, training


def position_losses(run: training.Run, params, tokens: np.ndarray, pc, distance: int,
                    seed: int, other_passage: bool = False) -> np.ndarray:
  """Mean next-token loss at each position [2 * passage + distance] over
  pc.eval_sequences sequences of validation `tokens`; with `other_passage`, on P' | F | P
  (`with_other_passage`) instead of P | F | P."""
  loss = runs.jitted(run, "position_loss", lambda p, t: optax.softmax_cross_entropy_with_integer_labels(
      run.apply(p, t[:, :-1]), t[:, 1:]).mean(0))
  total = None
  batches = repeat.dataset(tokens, seed=10_000 + seed, passage=pc.passage, distance=distance,
                           batch_size=pc.eval_batch_size, count=pc.eval_sequences)
  for b in batches:
    b = with_other_passage(b, pc.passage) if other_passage else b
    value = np.asarray(loss(params, training.global_batch(run, b)), np.float64)
    total = value if total is None else total + value
  return total / (pc.eval_sequences // pc.eval_batch_size)


def with_other_passage(tokens: np.ndarray, passage: int) -> np.ndarray:
  """Sequences P | F | P [batch, T] with each first passage replaced by the previous
  sequence's: P' | F | P."""
  return np.concatenate([np.roll(tokens[:, :passage], 1, axis=0), tokens[:, passage:]], 1)


def readback(run: training.Run, params, tokens: np.ndarray, pc, distance: int, seed: int,
             by_position: np.ndarray) -> dict:
  """Whether the model reads the passage back `distance` tokens later: the second reading's
  loss on P | F | P (`second`, from `by_position`, which must be
  `position_losses(run, params, tokens, pc, distance, seed)`: the same sequences) and on
  P' | F | P (`second_after_other`, computed here from those sequences), and `readback`,
  the second minus the first. Everything a model sees after the first reading is the same in
  both, so readback is 0 for one that cannot reach the first reading (a sliding window
  shorter than the filler) and positive as far as it uses what it read there."""
  second, after_other = (repeat.reading_losses(losses, pc.passage, distance)["second"]
                         for losses in (by_position, position_losses(
                             run, params, tokens, pc, distance, seed, other_passage=True)))
  return dict(second=second, second_after_other=after_other, readback=after_other - second)


def memory_gates(run: training.Run, params, tokens: np.ndarray, distance: int) -> list | None:
  """Per layer, the Titans memory's gates on `tokens` [batch, T] averaged over tokens and
  heads: theta / max_lr (the inner learning rate as a share of its ceiling), alpha (the
  forgetting rate), eta (the momentum's decay), and `kept` = exp(distance x mean log(1 -
  alpha)), the share of a write that survives `distance` tokens of forgetting. None for
  models without a memory reading the block's input (MAC reads its segments' outputs)."""
  model = nnx.merge(run.graphdef, params)
  mixers = [b.mixer for b in model.blocks]
  if not all(isinstance(m, TitansMixer) and m.variant != "mac" for m in mixers):
    return None
  x, out = model.embed(tokens), []
  mask = jnp.ones(tokens.shape, bool)
  for block, mixer in zip(model.blocks, mixers):
    lr, eta, retain, _ = mixer.memory.gates(block.mixer_norm(x), mask)
    out.append(dict(theta_share=float(lr.mean() / mixer.memory.max_lr),
                    alpha=float(1 - retain.mean()), eta=float(eta.mean()),
                    kept=float(jnp.exp(distance * jnp.log(retain).mean()))))
    x, _ = block(x)
  return out


def passage_memory(run: training.Run, params, tokens: np.ndarray, passage: int,
                   distance: int) -> list | None:
  """Per layer, what the memory holds of the passage when its second reading starts, on
  sequences `tokens` [batch, 2 * passage + distance] = P | F | P: the associative loss
  ||M(k_t) - v_t||^2 on the second reading's keys and values (mean over tokens, heads and
  sequences) through the memory's weights after P | F (`after_passage`), after P' | F with P'
  another sequence's passage (`after_other`), and its learned initial weights (`initial`).
  The keys and values are the real sequence's in all three, so after_passage below
  after_other means the state holds the passage's own key-value pairs.

  Titans (LMM, MAG, MAL): the memory's keys and values (`NeuralMemory.associative_loss`).
  HOPE: M_memory's keys and targets M_memory(v_t) as the model writes them on the second
  reading (`SelfModifyingMemory.inner_statistics`), through M_memory's running weights.
  None for other models."""
  model = nnx.merge(run.graphdef, params)
  mixers = [b.mixer for b in model.blocks]
  if all(isinstance(m, TitansMixer) and m.variant != "mac" for m in mixers):
    losses, memories = _titans_losses, [m.memory for m in mixers]
  elif all(isinstance(m, SelfModifyingMemory) for m in mixers):
    losses, memories = _self_modifying_losses, mixers
  else:
    return None
  prefix = passage + distance
  x, x_other, out = model.embed(tokens), model.embed(with_other_passage(tokens, passage)), []
  for block, memory in zip(model.blocks, memories):
    h, h_other = block.mixer_norm(x), block.mixer_norm(x_other)
    _, after_passage = memory(h[:, :prefix])
    _, after_other = memory(h_other[:, :prefix])
    out.append(losses(memory, h[:, prefix:], after_passage, after_other))
    x, _ = block(x)
    x_other, _ = block(x_other)
  return out


def _titans_losses(memory, second, after_passage, after_other) -> dict:
  conv = after_passage.conv    # the same keys and values in all three
  states = dict(initial=memory.init_state(len(second)).replace(conv=conv),
                after_other=after_other.replace(conv=conv), after_passage=after_passage)
  return {name: float(memory.associative_loss(second, state).mean())
          for name, state in states.items()}


def _self_modifying_losses(memory, second, after_passage, after_other) -> dict:
  stats = memory.inner_statistics(second, after_passage)
  pairs = stats["memory_key"], stats["memory_target"]
  weights = dict(initial=memory.init_state(len(second)).memory_running,
                 after_other=after_other.memory_running, after_passage=after_passage.memory_running)
  loss = jax.vmap(lambda w, k, target: jnp.sum((memory_apply(w, k) - target) ** 2, -1))
  return {name: float(loss(w, *pairs).mean()) for name, w in weights.items()}


def inner_clips(run: training.Run, params, tokens: np.ndarray) -> list | None:
  """Per layer, how often the Titans memory's inner-gradient clip binds on `tokens`
  [batch, T]: `clipped`, the share of (sequence, token, head) whose inner gradient at its
  chunk's start weights (`NeuralMemory.inner_gradient_norm`) is longer than max_grad_norm,
  and `norm_over_clip`, the mean of that norm over max_grad_norm (0 and None without a
  clip). The memory streams chunk by chunk to reach each chunk's start state. None as for
  `memory_gates`."""
  model = nnx.merge(run.graphdef, params)
  mixers = [b.mixer for b in model.blocks]
  if not all(isinstance(m, TitansMixer) and m.variant != "mac" for m in mixers):
    return None
  x, out = model.embed(tokens), []
  for block, mixer in zip(model.blocks, mixers):
    memory, h = mixer.memory, block.mixer_norm(x)
    state, norms = memory.init_state(len(tokens)), []
    for start in range(0, h.shape[1], memory.chunk_size):
      piece = h[:, start:start + memory.chunk_size]
      norms.append(memory.inner_gradient_norm(piece, state))
      _, state = memory(piece, state)
    norms, clip = jnp.concatenate(norms, 1), memory.max_grad_norm
    out.append(dict(clipped=float((norms > clip).mean()) if clip else 0.0,
                    norm_over_clip=float((norms / clip).mean()) if clip else None))
    x, _ = block(x)
  return out


def self_modifying_gates(run: training.Run, params, tokens: np.ndarray,
                         distance: int) -> list | None:
  """Per layer of a model whose mixers are self-modifying memories (HOPE), what its inner rule
  does on `tokens` [batch, T] (`SelfModifyingMemory.inner_statistics`): eta (the step size
  every memory of a head takes) and alpha (its forgetting rate, 1 - alpha_t) averaged over
  tokens and heads, kept = exp(distance x mean log alpha_t), and per memory (M_k, M_v, M_eta,
  M_alpha, M_memory) `clipped`, the share of (sequence, token, head) whose inner gradient is
  longer than max_grad_norm, and `norm_over_clip`, that length's mean over max_grad_norm
  (0 and None without a clip). None for other models."""
  model = nnx.merge(run.graphdef, params)
  mixers = [b.mixer for b in model.blocks]
  if not all(isinstance(m, SelfModifyingMemory) for m in mixers):
    return None
  x, out = model.embed(tokens), []
  for block, mixer in zip(model.blocks, mixers):
    stats = mixer.inner_statistics(block.mixer_norm(x))
    norms, clip = jnp.moveaxis(stats["gradient_norm"], 2, 0).reshape(5, -1), mixer.max_grad_norm
    out.append(dict(eta=float(stats["eta"].mean()), alpha=float(1 - stats["alpha"].mean()),
                    kept=float(jnp.exp(distance * jnp.log(stats["alpha"]).mean())),
                    clipped=((norms > clip).mean(1) if clip else jnp.zeros(5)).tolist(),
                    norm_over_clip=(norms / clip).mean(1).tolist() if clip else None))
    x, _ = block(x)
  return out


def scores(run: training.Run, params, validation: np.ndarray, pc) -> dict:
  gates_batch = next(iter(repeat.dataset(validation, seed=10_000, passage=pc.passage,
                                         distance=pc.distance, batch_size=pc.eval_batch_size)))
  out = dict(gates=memory_gates(run, params, gates_batch[:, :-1], pc.distance),
             passage_memory=passage_memory(run, params, gates_batch[:, :-1], pc.passage,
                                           pc.distance),
             clips=inner_clips(run, params, gates_batch[:, :-1]),
             self_modifying=self_modifying_gates(run, params, gates_batch[:, :-1], pc.distance),
             readback={})
  for distance in pc.eval_distances:
    by_position = position_losses(run, params, validation, pc, distance, run.config.seed)
    out[str(distance)] = repeat.reading_losses(by_position, pc.passage, distance)
    out["readback"][str(distance)] = readback(run, params, validation, pc, distance,
                                              run.config.seed, by_position)
    if distance == pc.distance:
      out["by_position"] = by_position.tolist()
  return out


def run_config(config, arm: str, seed: int) -> ml_collections.ConfigDict:
  pc = config.repeat
  return runs.run_config(config, arm, seq_len=2 * pc.passage + pc.distance, steps=pc.steps,
                         seed=seed, batch_size=pc.batch_size)


def folder(workdir: Path, arm: str, seed: int) -> Path:
  return workdir / arm / f"seed{seed}"


def study_config(config) -> dict:
  """`runs.study_settings` of config.repeat."""
  return runs.study_settings(config.repeat)


def planned(config, arms: list[str],
            workdir: Path) -> list[tuple[Path, ml_collections.ConfigDict]]:
  """(folder, run config) of every run of the study: every arm at every seed."""
  return [(folder(workdir, arm, seed), run_config(config, arm, seed))
          for arm in arms for seed in range(config.seeds)]


def train_and_score(config, arm: str, seed: int, directory: Path) -> dict:
  pc = config.repeat
  corpus = runs.corpora(config, ["repeat"])["repeat"]
  run = training.prepare(run_config(config, arm, seed))
  data = repeat.dataset(corpus.train, seed=seed, passage=pc.passage, distance=pc.distance,
                        batch_size=run.config.batch_size)
  return runs.train_run(run, data, directory, lambda p: scores(run, p, corpus.validation, pc),
                        "repeat", study_config(config))


def submit(config, arms: list[str], workdir: Path, workers: runs.Workers):
  """Queues every arm's run of every seed on `workers`; returns the summary to call once they
  have run: {arms: {arm: summary}, distances, passage, distance}; see the module docstring."""
  jobs = {arm: [workers.submit(train_and_score, arm, seed, folder(workdir, arm, seed),
                               cost=workers.cost(arm, run_config(config, arm, seed)))
                for seed in range(config.seeds)] for arm in arms}
  return lambda: summary(config, {arm: [j.result for j in js] for arm, js in jobs.items()})


def summary(config, scores: dict) -> dict:
  """The study's results from each arm's scores, one per seed."""
  pc = config.repeat
  out = {}
  for arm, scored in scores.items():
    out[arm] = dict(
        readings={d: {k: runs.mean_std([r[d][k] for r in scored])
                      for k in ("first", "second", "gain")} for d in map(str, pc.eval_distances)},
        by_position=np.mean([r["by_position"] for r in scored], axis=0).tolist(),
        gates=[r.get("gates") for r in scored],
        passage_memory=[r.get("passage_memory") for r in scored],
        clips=[r.get("clips") for r in scored],
        self_modifying=[r.get("self_modifying") for r in scored],
        readback={d: {k: runs.mean_std([r["readback"][d][k] for r in scored])
                      for k in ("second", "second_after_other", "readback")}
                  for d in map(str, pc.eval_distances)}
        if all("readback" in r for r in scored) else None,   # runs scored before it existed
        **runs.costs(scored, scored))
  return dict(arms=out, distances=list(pc.eval_distances), passage=pc.passage,
              distance=pc.distance, steps=pc.steps)
