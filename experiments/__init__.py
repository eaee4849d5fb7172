"""Entry points (`python -m experiments.NAME`), their configs, and one folder per study."""
