"""Config for `python -m experiments.fact_injection`: the fact-injection study (Sparse Memory
Finetuning against full finetuning and LoRA, Lin et al. 2025, at CPU scale).

    python -m experiments.fact_injection --config=experiments/configs/fact_injection.py --workdir=DIR

The pretraining fields are those of every LM config (experiments/configs/common.py); the model
is a small byte-level memory_lm with one large, sparsely read product-key memory layer.
"""
import ml_collections

from experiments.configs import common, memory_lm


def get_config():
  c = common.lm_config("tiny", memory_lm.MODEL)
  c.update(dict(steps=1200, batch_size=32, seq_len=64, learning_rate=3e-3, warmup_steps=50,
                log_every=100, checkpoint_every=300))
  # A large, sparsely read table (Lin et al. read 4 x 32 of 1M slots): 4 heads x top-32 of
  # 256^2 slots, 0.2% of the table per token.
  c.model.update(dict(dim=128, num_layers=4, num_heads=4, mlp_dim=384, memory_layers=(2,),
                      num_slots=256 ** 2, memory_heads=4, key_dim=64, top_k=32))
  # Each seed pretrains its own model (initialisation and data order) in DIR/seed_<s>/.
  c.seeds = (0, 1, 2)
  # The injection methods run (comma-separated; a subset, e.g. "smf,full", runs less).
  c.methods = "smf,smf_tf,smf_all,smf_adamw,full,lora"
  # The world: people with 4 attributes; known people are in the pretraining text.
  c.facts = ml_collections.ConfigDict(dict(seed=0, num_known=64, num_new=16,
                                           text_fraction=0.25))
  # df over this many pretraining-distribution batches (python -m experiments.background_stats)
  # of background_batch_size sequences (one sequence per "document", so df separates common
  # slots from rare ones).
  c.background_batches = 200
  c.background_batch_size = 1
  # Injection: the new people's facts in stream_batches sequential batches (num_new / stream
  # people each), each stream batch `epochs` times in a shuffled order, facts_per_step facts
  # (each its statements and training-template QA lines) a step; 1 as in the paper.
  c.stream_batches = 4
  c.epochs = 6
  c.facts_per_step = 1
  c.include_qa = True
  c.known_eval_people = 32      # forgetting: QA accuracy on this many known people
  c.heldout_text_batches = 8    # held-out stdlib text for the NLL change
  c.matched_levels = (0.5, 0.7, 0.8)   # forgetting compared where each method learns this
  # Sweeps: two learning rates per method, the two ends of its frontier in the sizing runs
  # (docs/results/fact_injection.md), except SMF, where lr 300 learned less and forgot more
  # than lr 100 (3-seed means). SMF: SGD on the selected value rows (row-sparse); its loss is
  # a per-token mean and a row is read by few tokens with a small weight, hence learning rates
  # far above the paper's 2-5. smf_adamw: AdamW on the masked gradient of the whole table.
  # The tf / all ablations run at (ablation_t, ablation_lr), SMF's setting. Baselines: AdamW.
  # More values (t, adamw_t, ranks) are longer runs: e.g. --config.smf.t=(100,500,2000).
  c.smf = ml_collections.ConfigDict(dict(
      learning_rates=(100.0,), t=(500,), ablation_t=500, ablation_lr=100.0,
      adamw_t=(500,), adamw_learning_rates=(3e-3, 1e-2), adamw_weight_decay=0.0))
  c.full = ml_collections.ConfigDict(dict(learning_rates=(3e-5, 1e-4), weight_decay=0.1))
  c.lora = ml_collections.ConfigDict(dict(ranks=(16,), alpha=0.0, learning_rates=(3e-4, 1e-3),
                                          targets=("query", "key", "value", "out", "gate", "up",
                                                   "down"), weight_decay=0.1))
  return c
