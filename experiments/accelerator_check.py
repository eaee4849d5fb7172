"""The accelerator check (about 8 minutes on one H100 or H200), one JSON:

  python -m experiments.accelerator_check --out=accelerator.json [--size=tiny] [--sections=lm]

Sections: experiments/benchmarks/accelerator.py; the JSON is rewritten after each one, so a
run cut short keeps what it measured. Results: docs/results/accelerator.md.
"""
import json
import os
import time

from absl import flags

from experiments import cli
from experiments.benchmarks import accelerator
from runtime.workdir import write_json

OUT = flags.DEFINE_string("out", None, "Write the results here (JSON).")
SIZE = flags.DEFINE_enum("size", "accelerator", list(accelerator.SIZES),
                         "Shapes: 'accelerator' (about 125M parameters at 2048 tokens) or "
                         "'tiny' (a CPU smoke run).")
SECTIONS = flags.DEFINE_list("sections", list(accelerator.SECTIONS),
                             f"Which sections to run, of {list(accelerator.SECTIONS)}.")


def main(argv):
  cli.check_arguments(argv)
  if not OUT.value:
    raise cli.UsageError("--out is required (the JSON file to write)")
  folder = os.path.dirname(os.path.abspath(OUT.value))
  if not os.path.isdir(folder):
    raise cli.UsageError(f"--out: folder {folder} does not exist")
  unknown = sorted(set(SECTIONS.value) - set(accelerator.SECTIONS))
  if unknown or not SECTIONS.value:
    raise cli.UsageError(f"--sections: unknown {unknown or 'empty list'}; choose from "
                         f"{list(accelerator.SECTIONS)}")
  size = accelerator.SIZES[SIZE.value]
  result = dict(size=SIZE.value, **accelerator.describe(), sections={}, section_seconds={},
                targets=accelerator.TARGETS)
  start = time.perf_counter()
  for name in (s for s in accelerator.SECTIONS if s in SECTIONS.value):
    section_start = time.perf_counter()
    result["sections"][name] = accelerator.MEASURE[name](size)
    result["section_seconds"][name] = time.perf_counter() - section_start
    result["met"] = accelerator.verdicts(result["sections"])
    result["seconds"] = time.perf_counter() - start
    write_json(OUT.value, result)
    print(f"{name}: {result['section_seconds'][name]:.0f} s", flush=True)
  print(json.dumps(dict(met=result["met"], seconds=round(result["seconds"])), indent=1))


if __name__ == "__main__":
  cli.run(main)
