"""TF-IDF slot selection of Sparse Memory Finetuning (Lin et al. 2025, sec. 4).

Background: df(i) = number of background batches (from the pretraining distribution) that
read slot i at least once, df(i) = sum_b 1[c_b(i) > 0]. For a training batch with slot reads
c(i) (see `memory_layers.access_stats`):

    tfidf(i) = c(i) / sum_j c(j) * log((|B| + 1) / (df(i) + 1))

and the top-t accessed slots by score are the only value rows that learn this step.
Ablations: `tf` ranks by c(i) alone (no IDF), `all` selects every accessed slot.
"""
import chex
import jax
import jax.numpy as jnp

SELECTIONS = ("tfidf", "tf", "all")


def batch_presence(counts: jax.Array) -> jax.Array:
  """1[c_b(i) > 0] as int32 [N]: add these over background batches to get df."""
  return (counts > 0).astype(jnp.int32)


def inverse_document_frequency(df: jax.Array, num_batches: int) -> jax.Array:
  """idf(i) = log((|B| + 1) / (df(i) + 1)); a slot never read gets the maximum log(|B| + 1)."""
  return jnp.log((num_batches + 1.0) / (df.astype(jnp.float32) + 1.0))


def tfidf_scores(counts: jax.Array, df: jax.Array | None, num_batches: int) -> jax.Array:
  """tfidf(i) above, [N] float32; with df None, the term frequency c(i) / sum c alone."""
  chex.assert_rank(counts, 1)
  tf = counts.astype(jnp.float32) / jnp.maximum(counts.sum(), 1).astype(jnp.float32)
  if df is None:
    return tf
  chex.assert_equal_shape((counts, df))
  return tf * inverse_document_frequency(df, num_batches)


def check_top_t(t: int, num_slots: int, field: str = "t") -> None:
  """Raises ValueError unless 1 <= t <= num_slots."""
  if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= num_slots:
    raise ValueError(f"{field} must be an integer in 1..{num_slots} (the memory table's slots), "
                     f"got {t!r}")


def top_t_mask(scores: jax.Array, counts: jax.Array, t: int) -> jax.Array:
  """A [N] bool mask of the t highest-scoring slots among those read (c(i) > 0).

  Fewer than t slots are selected when fewer than t were read; ties break toward lower ids.
  """
  check_top_t(t, scores.shape[0])
  masked = jnp.where(counts > 0, scores, -jnp.inf)
  top, ids = jax.lax.top_k(masked, t)
  return jnp.zeros(scores.shape, bool).at[ids].set(top > -jnp.inf)


def _check_selection(selection: str, df) -> None:
  if selection not in SELECTIONS:
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
  if selection == "tfidf" and df is None:
    raise ValueError("selection 'tfidf' needs background document frequencies (df)")


def select_slots(counts: jax.Array, df: jax.Array | None, num_batches: int, t: int,
                 selection: str = "tfidf") -> jax.Array:
  """The slots whose value rows learn this batch, as a [N] bool mask.

  selection: "tfidf" (top-t by tfidf; needs df), "tf" (top-t by counts), "all" (every slot
  read; t unused).
  """
  _check_selection(selection, df)
  if selection == "all":
    return counts > 0
  return top_t_mask(tfidf_scores(counts, df if selection == "tfidf" else None, num_batches),
                    counts, t)


def select_rows(rows: jax.Array, counts: jax.Array, df: jax.Array | None, num_batches: int,
                t: int, selection: str = "tfidf") -> jax.Array:
  """`select_slots` over the distinct slots read instead of all N: rows [U] ascending slot
  ids (padding: N, with count 0) and their reads counts [U] -> a [U] bool mask. It selects
  the same slots as `select_slots` on the dense counts (ties toward lower ids) at a cost
  independent of N; t is checked against N by the caller."""
  _check_selection(selection, df)
  if selection == "all":
    return counts > 0
  row_df = None if selection == "tf" else jnp.take(df, rows, mode="fill", fill_value=0)
  return top_t_mask(tfidf_scores(counts, row_df, num_batches), counts, min(t, rows.shape[0]))
