"""The repeated-passage study for Titans LMM allowed to write harder: a higher ceiling on its
inner learning rate (theta_t = max_lr * sigmoid(.), max_lr 0.01 by default, here 0.03 and
0.1) and a looser clip on each token's inner gradient (max_grad_norm 1 by default, here 10).
Trained on the probe, the default memory learns to write little (docs/results/compare.md);
this asks whether a memory allowed to write harder reads the second copy better.

    python -m experiments.compare --config=experiments/configs/compare_memory_write.py --workdir=DIR

Everything else is the default compare config's repeat study (experiments/configs/compare.py),
whose other arms (e.g. `hope`, `titans_mag`) --config.arms may add.
"""
from experiments.configs import compare

VARIANTS = dict(titans_lmm_max_lr_3x=dict(max_lr=0.03), titans_lmm_max_lr_10x=dict(max_lr=0.1),
                titans_lmm_clip_10x=dict(max_grad_norm=10.0),
                titans_lmm_max_lr_10x_clip_10x=dict(max_lr=0.1, max_grad_norm=10.0))


def get_config(arg: str | None = None):
  c = compare.get_config(arg)
  lmm = c.arm_models.titans_lmm
  for name, overrides in VARIANTS.items():
    c.arm_models[name] = dict(config=lmm.config, model=dict(lmm.model.to_dict(), **overrides))
  c.arms = ",".join(["titans_lmm", *VARIANTS])
  c.studies = "repeat"
  return c
