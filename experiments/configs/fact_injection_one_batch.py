"""Config for the fact-injection study in the paper's regime: the 64 new facts injected in one
batch (Lin et al. 2025 inject a set of facts once), not as a stream, each method from a weak
setting up to one at which it learns at least 0.8 of them on every seed
(docs/results/fact_injection.md):

    python -m experiments.fact_injection --config=experiments/configs/fact_injection_one_batch.py --workdir=DIR

Pretraining is the default config's (experiments/configs/fact_injection.py); the stream's
ranking ablations (smf_tf, smf_all) are left out.
"""
from experiments.configs import fact_injection


def get_config():
  c = fact_injection.get_config()
  c.stream_batches = 1
  c.methods = "smf,smf_adamw,full,lora"
  # More rows (t) or a larger rank learn more and rewrite more; the learning rates are the
  # ones that learned most at each in the sizing runs.
  c.smf.update(dict(t=(500, 2000, 4000), learning_rates=(100.0,),
                    adamw_t=(500, 2000), adamw_learning_rates=(1e-2,)))
  c.full.learning_rates = (1e-4, 3e-4)
  c.lora.update(dict(ranks=(16, 64), learning_rates=(1e-3,)))
  return c
