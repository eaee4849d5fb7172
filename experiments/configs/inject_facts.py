"""The old name of experiments/configs/fact_injection.py: loading it says so."""


def get_config(arg=None):
  raise ValueError("experiments/configs/inject_facts.py is now "
                   "experiments/configs/fact_injection.py (the fields are unchanged)")
