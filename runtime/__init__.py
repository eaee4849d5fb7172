"""The training runtime every entry point and study shares.

  training.py       the validated setup of a run (`prepare`), the train state and the step
  loop.py           phases, the one training loop (`train`) and plain pretraining
  checkpoints.py    orbax checkpoints with checksums, fallback and quarantine
  metrics.py        metrics.jsonl, perf.jsonl, TensorBoard
  mesh.py           the device mesh and the config's sharding rules (`hope.sharding`)
  optimizers.py     config.optimizer -> optax, per parameter group and period
  config_schema.py  the declarative config schema, checked before any compile
  errors.py         UsageError and RunStopped
  workdir.py        the run folder; atomic JSON writes
  text_data.py, facts.py, recall.py   data: text corpora, the facts world, MQAR
  models.py         the model builders by name
  evaluation.py     validation loss of a checkpoint, with in-context state carried
  slot_statistics.py  background slot statistics for Sparse Memory Finetuning
  performance.py    model FLOP/s against a reference rate

It imports the libraries (`hope`, `memory_layers`) and never `experiments`.
"""
