"""The old name of `python -m experiments.crash_check`: says so in one line (exit 2)."""
from experiments import cli

if __name__ == "__main__":
  cli.fail("experiments.kill_test is now `python -m experiments.crash_check`; the flags are "
           "unchanged")
