"""The description of the machine that every benchmark and study result records."""
import os
from pathlib import Path

from runtime import performance


def test_machine_names_the_cpu_model_the_cores_and_the_devices():
  described = performance.machine()
  assert described.endswith(f", {os.cpu_count()} cores; cpu: cpu, 8 device(s)")
  cpuinfo = Path("/proc/cpuinfo")
  lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
  model = next((line.split(":", 1)[1].strip() for line in lines
                if line.startswith("model name")), None)
  if model:    # x86 Linux, as on CI; elsewhere the processor or architecture name
    assert described == f"{model}, {os.cpu_count()} cores; cpu: cpu, 8 device(s)"
