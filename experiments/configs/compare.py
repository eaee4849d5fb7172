"""Config for `python -m experiments.compare`: the architecture studies.

  python -m experiments.compare --config=experiments/configs/compare.py --workdir=DIR
  python -m experiments.compare --config=experiments/configs/compare.py:340m --workdir=DIR

Three studies (`studies`), each run for `seeds` seeds (0, 1, ...):
  recall    multi-query associative recall (Zoology's setting: the loss on the queried
            values only), trained at each (length, pairs) of `recall.lengths` /
            `recall.pairs`, with a learning-rate sweep on seed 0; scored at every multiple
            of the training length in `recall.multipliers`;
  repeat    the repeated-passage probe: passage, filler of `repeat.distance` bytes, the
            passage again; the second reading's loss against the first's, at the training
            distance and at `repeat.eval_distances`;
  ablation  HOPE's parts (the Nested Learning paper's Table 6) on language modelling:
            the variants in `ablation.variants`, each an arm or a HOPE variant of `ablations`.

The default (`cpu`) is sized for the 2-core CPU (Zoology's width 64, two layers); `340m`,
`760m` and `1.3b` use the papers' shapes and budgets, for accelerators.

Every arm is a pretraining config file (`arm_models.<arm>.config`) with `model` overrides on
top of the shared `model` shape; mlp_dim is set per arm so that all arms hold the same number
of parameters within `param_tolerance` (checked, and printed, before anything compiles).
"""
import ml_collections

ARM_CONFIGS = dict(transformer="transformer", transformer_swa="transformer",
                   titans_lmm="titans_lmm", titans_mac="titans_mac", titans_mag="titans_mag",
                   hope="hope", hope_attention="hope_attention")
# mlp_dim per arm and size, solved so that every arm is within ~3% of the Transformer's
# parameter count; transformer_swa and titans_mag also get the sliding window.
_MLP_DIM = {
    "cpu": dict(transformer=256, transformer_swa=256, titans_lmm=204, titans_mac=96,
                titans_mag=96, hope=200, hope_attention=212),
    "340m": dict(transformer=3328, transformer_swa=3328, titans_lmm=2944, titans_mac=1280,
                 titans_mag=1280, hope=2816, hope_attention=2304),
    "760m": dict(transformer=4864, transformer_swa=4864, titans_lmm=4224, titans_mac=1664,
                 titans_mag=1664, hope=4096, hope_attention=3328),
    "1.3b": dict(transformer=6528, transformer_swa=6528, titans_lmm=5760, titans_mac=2304,
                 titans_mag=2304, hope=5632, hope_attention=4480),
}
# The HOPE variants of the ablation study: model overrides on the `hope` arm.
ABLATIONS = dict(
    hope_gd=dict(inner_rule="gd"),            # plain gradient descent, not DGD
    hope_no_decay=dict(inner_decay=False),    # no weight decay (alpha_t = 1)
    hope_cms_frozen=dict(cms_inner_lr=0.0),   # CMS levels trained by the outer loop only
    hope_cms_teach=dict(cms_signal="teach"),  # CMS driven by the next-token gradient
)
_SKIP_NONFINITE = dict(on_nonfinite="skip", max_consecutive_skips=1_000_000)

_CPU = dict(
    shape="tiny", window=32,
    model=dict(dim=64, num_layers=2, num_heads=4),
    train=dict(batch_size=16, seq_len=128, learning_rate=3e-3, warmup_steps=50, weight_decay=0.1,
               checkpoint_every=500, log_every=100, **_SKIP_NONFINITE),
    recall=dict(lengths=(64, 128), pairs=(4, 8), steps=5000, batch_size=8,
                learning_rates=(1e-3, 3e-3, 1e-2), multipliers=(1, 2, 4, 8, 16),
                eval_sequences=128, eval_batch_size=32),
    repeat=dict(passage=32, distance=64, steps=500, batch_size=16, eval_distances=(64, 256, 1024),
                eval_sequences=64, eval_batch_size=16),
    ablation=dict(steps=500, batch_size=16, eval_batches=16),
)
_ACCELERATOR = dict(
    window=512, model={},
    train=dict(batch_size=256, seq_len=2048, learning_rate=4e-4, warmup_steps=2000,
               weight_decay=0.1, checkpoint_every=1000, log_every=100, **_SKIP_NONFINITE),
    recall=dict(lengths=(64, 128, 256), pairs=(4, 8, 16), steps=20_000, batch_size=256,
                learning_rates=(3e-4, 1e-3, 3e-3), multipliers=(1, 2, 4, 8, 16),
                eval_sequences=1024, eval_batch_size=256),
    repeat=dict(passage=512, distance=2048, steps=5_000, batch_size=256,
                eval_distances=(2048, 8192, 32768), eval_sequences=256, eval_batch_size=32),
    ablation=dict(steps=30_000, batch_size=256, eval_batches=16),
)
_SETTINGS = {"cpu": _CPU, **{s: dict(_ACCELERATOR, shape=s) for s in ("340m", "760m", "1.3b")}}


def get_config(arg: str | None = None):
  size = arg or "cpu"
  if size not in _SETTINGS:
    raise ValueError(f"unknown compare size {size!r}; choose from {sorted(_SETTINGS)}")
  s = _SETTINGS[size]
  c = ml_collections.ConfigDict()
  c.size = size
  c.arms = ",".join(ARM_CONFIGS)            # comma-separated names from arm_models
  c.studies = "recall,repeat,ablation"      # comma-separated
  c.seeds = 3                               # seeds 0 .. seeds - 1
  # Processes that train runs side by side, each on its share of the CPU cores (the small
  # CPU models keep about one core busy); 0: one per core on a CPU backend, 1 elsewhere.
  c.workers = 0 if size == "cpu" else 1
  c.param_tolerance = 0.10                  # max/min parameter count across arms, minus 1
  c.shape = s["shape"]                      # sizes in experiments/configs/common.py SHAPES
  c.model = ml_collections.ConfigDict(s["model"])  # shape overrides shared by every arm
  c.arm_models = ml_collections.ConfigDict({
      name: dict(config=base, model=dict(
          mlp_dim=_MLP_DIM[size][name],
          **(dict(window=s["window"]) if name in ("transformer_swa", "titans_mag") else {})))
      for name, base in ARM_CONFIGS.items()})
  c.ablations = ml_collections.ConfigDict(ABLATIONS)
  c.train = ml_collections.ConfigDict(s["train"])
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1) if size == "cpu"
                                      else dict(data=-1, fsdp=1, tensor=1))
  # 1. Multi-query associative recall at each (length, pairs); the best learning rate of
  # seed 0 (accuracy at the training length) trains the other seeds.
  c.recall = ml_collections.ConfigDict(s["recall"])
  # 2. The repeated-passage probe on the default corpus (validation files for scoring).
  c.repeat = ml_collections.ConfigDict(dict(s["repeat"], source="stdlib", validation_percent=5))
  # 3. HOPE ablated, against HOPE-Attention and the Transformer: validation loss on the
  # default corpus after ablation.steps steps of train.batch_size x train.seq_len tokens.
  c.ablation = ml_collections.ConfigDict(dict(
      s["ablation"], variants="hope," + ",".join(ABLATIONS) + ",hope_attention,transformer",
      source="stdlib", validation_percent=5))
  return c
