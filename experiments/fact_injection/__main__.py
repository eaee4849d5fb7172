"""`python -m experiments.fact_injection`: see main.py."""
from experiments import cli
from experiments.fact_injection import main

cli.run(main.main)
