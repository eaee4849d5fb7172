"""`python -m experiments.compare`: see main.py."""
from experiments import cli
from experiments.compare import main

cli.run(main.main)
