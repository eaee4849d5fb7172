"""Config of `python -m experiments.continual_lm`: continual-learning methods on language
models trained on a stream of text domains.

    python -m experiments.continual_lm --config=experiments/configs/continual_lm.py \
        --workdir=/tmp/continual_lm

The default grid: the tiny Transformer, Titans LMM, HOPE and memory LM, each with finetune,
ER, EWC, LwF, LoRA and joint training (and SMF on the memory LM), on the built-in domains
stdlib (Python source) -> man_de (German manual pages, roff) -> c_headers (C headers), 60
steps of 8 x 128 bytes per domain, seed 0; the headline cells (finetune, ER and joint on
the Transformer and HOPE) also with seeds 1 and 2. Method hyperparameters were not tuned
on this stream.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  # The stream: built-in corpora (stdlib, c_headers, man_de) or text files / folders.
  c.domains = "stdlib,man_de,c_headers"
  c.validation_percent = 5
  c.stream = "task_based"         # task_based | task_free (cross-faded, no boundaries)
  c.boundary_width = 0.2          # task_free: cross-fade width, as a fraction of a domain

  # The grid: every architecture x method at `seeds`, and the headline cells also at
  # `headline.seeds`.
  c.architectures = "transformer,titans_lmm,hope,memory_lm"   # configs' file names
  c.size = "tiny"
  # Model fields set in every architecture (0: the size's value).
  c.model_overrides = ml_collections.ConfigDict(dict(dim=0, num_layers=0, num_heads=0, mlp_dim=0))
  c.methods = "finetune,er,ewc,lwf,lora,joint"
  c.memory_methods = "smf"        # only on architectures with a memory layer (memory_lm)
  c.seeds = (0,)
  c.headline = ml_collections.ConfigDict(dict(
      architectures="transformer,hope", methods="finetune,er,joint", seeds=(0, 1, 2)))

  # Training, shared by every cell (the learning rate is constant after the first warm-up).
  c.steps_per_domain = 60
  c.batch_size = 8
  c.seq_len = 128
  c.learning_rate = 3e-3
  c.warmup_steps = 20
  c.checkpoint_every = 60
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # Evaluation: the loss matrix on `validation_sequences` windows of each domain's validation
  # split, and the curves every `eval_every` steps on the first `curve_sequences` of them.
  c.validation_sequences = 64
  c.eval_every = 20
  c.curve_sequences = 16
  c.consolidation_sequences = 64  # training windows of a domain given to end_context

  # Method hyperparameters (untuned).
  c.replay = ml_collections.ConfigDict(dict(buffer_size=256))   # er, derpp, agem: sequences
  c.derpp = ml_collections.ConfigDict(dict(alpha=0.1, beta=0.5))
  c.agem = ml_collections.ConfigDict(dict(eps=1e-7))
  c.ewc = ml_collections.ConfigDict(dict(strength=100.0))        # sampled Fisher
  c.online_ewc = ml_collections.ConfigDict(dict(strength=100.0, gamma=1.0))
  c.si = ml_collections.ConfigDict(dict(strength=1.0, damping=0.1))
  c.mas = ml_collections.ConfigDict(dict(strength=1.0))
  c.lwf = ml_collections.ConfigDict(dict(temperature=2.0))
  # lora and smf train everything on the first domain, then only an adapter / memory rows.
  c.lora = ml_collections.ConfigDict(dict(rank=8, alpha=0.0, learning_rate=3e-3,
                                          weight_decay=0.0))   # alpha 0: the rank
  c.smf = ml_collections.ConfigDict(dict(top_t=200, learning_rate=1000.0))   # SGD on the rows
  return c
