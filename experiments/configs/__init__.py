"""Plain ml_collections config files, one per model or study; `--config=FILE.py:SIZE`."""
import importlib

# The pretraining configs (one model each), by file name.
LM_CONFIGS = ("transformer", "titans_lmm", "titans_mac", "titans_mag", "titans_mal", "hope",
              "hope_attention", "memory_lm")


def lm_config(name: str, size: str | None = None):
  """The pretraining config `experiments/configs/<name>.py:<size>`; ValueError if unknown."""
  if name not in LM_CONFIGS:
    raise ValueError(f"unknown config {name!r}; choose from {list(LM_CONFIGS)}")
  return importlib.import_module(f"experiments.configs.{name}").get_config(size)
