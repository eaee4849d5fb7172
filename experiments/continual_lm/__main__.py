"""`python -m experiments.continual_lm`: see main.py."""
from experiments import cli
from experiments.continual_lm import main

cli.run(main.main)
