"""The repeated-passage study for Titans LMM with a higher ceiling on its inner learning rate:
theta_t = max_lr * sigmoid(.), max_lr 0.01 (the arm's default), 0.03 and 0.1. Trained on the
probe, the default memory learns to write little (docs/results/compare.md); this asks whether
a memory allowed to write harder reads the second copy better.

    python -m experiments.compare --config=experiments/configs/compare_memory_write.py --workdir=DIR

Everything else is the default compare config's repeat study (experiments/configs/compare.py).
"""
from experiments.configs import compare

MAX_LR = dict(titans_lmm_max_lr_3x=0.03, titans_lmm_max_lr_10x=0.1)


def get_config(arg: str | None = None):
  c = compare.get_config(arg)
  lmm = c.arm_models.titans_lmm
  for name, max_lr in MAX_LR.items():
    c.arm_models[name] = dict(config=lmm.config, model=dict(lmm.model.to_dict(), max_lr=max_lr))
  c.arms = ",".join(["titans_lmm", *MAX_LR])
  c.studies = "repeat"
  return c
