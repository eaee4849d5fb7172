"""The suites of `python -m experiments.benchmark` (see suites.py)."""
