"""Config for experiments/compare.py: HOPE against Titans and the Transformer.

  python -m experiments.compare --config=experiments/configs/compare.py --workdir=DIR
  python -m experiments.compare --config=experiments/configs/compare.py:340m --workdir=DIR

The default (`cpu`) uses the tiny shapes (width 128, 4 layers) and token budgets that fit
one CPU in under an hour; `340m`, `760m` and `1.3b` use the papers' shapes (24 layers,
widths 1024 / 1536 / 2048) and budgets for accelerators.

Every arm is a pretraining config (`config`: a file in experiments/configs) with `model`
overrides; the overrides set mlp_dim so that all arms hold the same number of parameters
within `param_tolerance` (checked and printed before anything is compiled). Every arm trains
with the same settings (`train`), steps and data order, so token budgets match too.
"""
import ml_collections

# Per size: the shapes' name in experiments/configs/common.py and each arm's overrides.
# mlp_dim is solved so every arm is within ~3% of HOPE's parameter count (HOPE first
# after the Transformer, so a run cut short still holds the main comparison).
_ARMS = {
    "cpu": dict(
        transformer=dict(mlp_dim=512),
        hope=dict(mlp_dim=400),
        titans_lmm=dict(mlp_dim=416),
        hope_attention=dict(mlp_dim=432),
        transformer_swa=dict(mlp_dim=512, window=32),
        titans_mag=dict(mlp_dim=192),
        titans_mac=dict(mlp_dim=192)),
}
_BASE = dict(transformer="transformer", transformer_swa="transformer", titans_lmm="titans_lmm",
             titans_mac="titans_mac", titans_mag="titans_mag", hope="hope",
             hope_attention="hope_attention")
_PAPER = {  # mlp_dim per arm at the papers' shapes; sliding window 512 as in titans_base
    "340m": dict(transformer=3328, titans_lmm=2944, titans_mac=1280, hope=2816,
                 hope_attention=2304),
    "760m": dict(transformer=4864, titans_lmm=4224, titans_mac=1664, hope=4096,
                 hope_attention=3328),
    "1.3b": dict(transformer=6528, titans_lmm=5760, titans_mac=2304, hope=5632,
                 hope_attention=4480),
}
for _size, _mlp in _PAPER.items():
  _ARMS[_size] = dict(
      transformer=dict(mlp_dim=_mlp["transformer"]),
      hope=dict(mlp_dim=_mlp["hope"]),
      titans_lmm=dict(mlp_dim=_mlp["titans_lmm"]),
      hope_attention=dict(mlp_dim=_mlp["hope_attention"]),
      transformer_swa=dict(mlp_dim=_mlp["transformer"], window=512),
      titans_mag=dict(mlp_dim=_mlp["titans_mac"]),
      titans_mac=dict(mlp_dim=_mlp["titans_mac"]))

# A non-finite step keeps the previous state and training goes on; the results count them.
_SKIP_NONFINITE = dict(on_nonfinite="skip", max_consecutive_skips=1_000_000)
_CPU = dict(
    shape="tiny",
    train=dict(batch_size=8, seq_len=128, learning_rate=3e-3, warmup_steps=10,
               checkpoint_every=100, log_every=20, **_SKIP_NONFINITE),
    mesh=dict(data=1, fsdp=1, tensor=1),
    lm=dict(steps=160, eval_batches=32),  # = steps_a + steps_b: one compiled step
    continual=dict(steps_a=80, steps_b=80, eval_batches=16),
    recall=dict(train_context=256, steps=120, num_pairs=8, contexts=(256, 512, 1024, 2048, 4096),
                eval_sequences=16, eval_batch_size=4),
    ttl=dict(context=2048, batches=4),
)
_ACCELERATOR = dict(
    train=dict(batch_size=256, seq_len=2048, learning_rate=4e-4, warmup_steps=2000,
               checkpoint_every=1000, log_every=100, **_SKIP_NONFINITE),
    mesh=dict(data=-1, fsdp=1, tensor=1),
    lm=dict(steps=30_000, eval_batches=16),
    continual=dict(steps_a=5_000, steps_b=5_000, eval_batches=16),
    recall=dict(train_context=2048, steps=5_000, num_pairs=64,
                contexts=(1024, 2048, 4096, 8192, 16384), eval_sequences=256, eval_batch_size=32),
    ttl=dict(context=16384, batches=4),
)
_SETTINGS = {"cpu": _CPU, **{s: dict(_ACCELERATOR, shape=s) for s in _PAPER}}
_SETTINGS["760m"] = dict(_SETTINGS["760m"], lm=dict(steps=60_000, eval_batches=16))
_SETTINGS["1.3b"] = dict(_SETTINGS["1.3b"], lm=dict(steps=200_000, eval_batches=16))


def get_config(arg: str | None = None):
  size = arg or "cpu"
  if size not in _SETTINGS:
    raise ValueError(f"unknown compare size {size!r}; choose from {sorted(_SETTINGS)}")
  s = _SETTINGS[size]
  c = ml_collections.ConfigDict()
  c.size = size
  c.arms = ",".join(_ARMS[size])            # comma-separated names from arm_models
  c.studies = "lm,continual,recall,ttl"     # comma-separated
  c.seed = 0
  c.param_tolerance = 0.10                  # max/min parameter count across arms, minus 1
  c.shape = s["shape"]                      # sizes in experiments/configs/common.py SHAPES
  # Arm name -> {config: a pretraining config file's name, model: overrides of its model}.
  c.arm_models = ml_collections.ConfigDict(
      {name: dict(config=_BASE[name], model=model) for name, model in _ARMS[size].items()})
  c.train = ml_collections.ConfigDict(s["train"])
  c.mesh = ml_collections.ConfigDict(s["mesh"])
  # 1. Language modelling: train on the default corpus, validation perplexity.
  c.lm = ml_collections.ConfigDict(dict(s["lm"], source="stdlib", validation_percent=5))
  # 2. Continual: domain A then domain B (standard-library packages), against A and B
  # interleaved batch by batch (the same batches in another order).
  c.continual = ml_collections.ConfigDict(dict(
      s["continual"], validation_percent=10,
      domain_a="email,http,urllib,xml,html,xmlrpc",
      domain_b="asyncio,multiprocessing,concurrent,threading,subprocess,queue,selectors"))
  # 3. Multi-query associative recall: trained at train_context, tested at each context.
  c.recall = ml_collections.ConfigDict(s["recall"])
  # 4. Test-time learning: loss by position on validation documents of `context` tokens,
  # read in pieces of train.seq_len with every memory's state carried across pieces.
  c.ttl = ml_collections.ConfigDict(s["ttl"])
  return c
