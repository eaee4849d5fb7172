"""`python -m experiments.continual`: see main.py."""
from experiments import cli
from experiments.continual import main

cli.run(main.main)
