"""The suites of `python -m experiments.benchmark`: library functions, no flags.

Each suite module has `run(...) -> dict` (its parameters and `rows`) and `table(result) -> str`.
"""
