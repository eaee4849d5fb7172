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
    cpu = performance.cpu_description(cpuinfo.read_text())
    assert cpu.startswith(model)
    assert described == f"{cpu}, {os.cpu_count()} cores; cpu: cpu, 8 device(s)"


def test_cpu_description_tells_apart_cpus_that_share_a_model_name():
  """Two CPUs with the same generic model name, as cloud machines report, differ in their
  family, model and stepping or their vector extensions; only the first processor counts."""
  block = ("processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: {model}\n"
           "model name\t: Intel(R) Xeon(R) Processor\nstepping\t: {stepping}\n"
           "cache size\t: 307200 KB\nflags\t\t: fpu sse2 avx avx2 {flags}\n\n")
  newer = block.format(n=0, model=207, stepping=2, flags="avx512f avx512_bf16 amx_tile amx_int8")
  older = block.format(n=0, model=85, stepping=7, flags="avx512f")
  other_core = block.format(n=1, model=1, stepping=1, flags="")
  assert performance.cpu_description(newer + other_core) == (
      "Intel(R) Xeon(R) Processor (family 6, model 207, stepping 2, cache 307200 KB; "
      "avx2 avx512f avx512_bf16 amx_tile)")
  assert performance.cpu_description(older) == (
      "Intel(R) Xeon(R) Processor (family 6, model 85, stepping 7, cache 307200 KB; "
      "avx2 avx512f)")
  assert performance.cpu_description("model name\t: Some CPU\n") == "Some CPU"
  assert performance.cpu_description("processor\t: 0\nBogoMIPS\t: 50.00\n") is None
