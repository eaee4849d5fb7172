"""Config for `python -m experiments.fact_injection`: the fact-injection study (Sparse Memory Finetuning
against full finetuning and LoRA, Lin et al. 2025, at CPU scale).

    python -m experiments.fact_injection --config=experiments/configs/fact_injection.py --workdir=DIR

The pretraining fields are those of every LM config (experiments/configs/common.py); the model
is a small byte-level memory_lm (one product-key memory layer). Sized so the whole study runs
in under 30 minutes on a 2-core CPU.
"""
import ml_collections

from experiments.configs import common, memory_lm


def get_config():
  c = common.lm_config("tiny", memory_lm.MODEL)
  c.update(dict(steps=1200, batch_size=32, seq_len=64, learning_rate=3e-3, warmup_steps=50,
                log_every=100, checkpoint_every=300))
  c.model.update(dict(dim=128, num_layers=4, num_heads=4, mlp_dim=384, memory_layers=(2,),
                      num_slots=64 ** 2, memory_heads=4, key_dim=64, top_k=16))
  # The world: people with 4 attributes; known people are in the pretraining text.
  c.facts = ml_collections.ConfigDict(dict(seed=0, num_known=64, num_new=16,
                                           text_fraction=0.25))
  # df over this many pretraining-distribution batches (python -m experiments.background_stats)
  # of background_batch_size sequences. One 64-byte sequence per "document" reads about half
  # of the 4096 slots, so df separates common from rare slots; a 32-sequence batch reads
  # 89% of slots in every batch (idf 0), unlike the paper's 64x64-token batches over 1M slots.
  c.background_batches = 200
  c.background_batch_size = 1
  # Injection: one fact per step, its statement paraphrases (plus, with include_qa, its
  # training-template QA lines) padded to seq_len; questions use held-out templates.
  c.include_qa = True
  c.known_eval_people = 32      # forgetting: QA accuracy on this many known people
  c.heldout_text_batches = 8    # held-out stdlib text for the NLL change
  c.eval_batch = 256            # candidate sequences scored per call
  # Sweeps. SMF: plain SGD on the selected value rows; its loss is a per-token mean and a row
  # is read by few tokens with weight ~1/16, hence learning rates far above the paper's 2-5.
  # The tf / all ablations run at (ablation_t, ablation_lr). Baselines: AdamW.
  c.smf = ml_collections.ConfigDict(dict(learning_rates=(300.0, 1000.0, 3000.0),
                                         t=(20, 50, 200), ablation_t=50, ablation_lr=1000.0))
  c.full = ml_collections.ConfigDict(dict(learning_rates=(3e-5, 1e-4, 3e-4, 1e-3),
                                          weight_decay=0.1))
  c.lora = ml_collections.ConfigDict(dict(ranks=(4, 16), alpha=0.0, learning_rates=(1e-3, 1e-2),
                                          targets=("query", "key", "value", "out", "gate", "up",
                                                   "down"), weight_decay=0.1))
  return c
