"""The old name of `python -m experiments.fact_injection`: says so in one line (exit 2)."""
from experiments import cli

if __name__ == "__main__":
  cli.fail("experiments.inject_facts is now `python -m experiments.fact_injection "
           "--config=experiments/configs/fact_injection.py`; the flags and config fields are "
           "unchanged")
