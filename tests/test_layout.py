"""The project's structure: a one-way import graph, short entry scripts, one training loop."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hope", "memory_layers", "cl_methods", "runtime", "experiments")
# What each package may import of ours: libraries, then the runtime, then entry points.
ALLOWED = {
    "cl_methods": set(),
    "hope": set(),
    "memory_layers": {"hope"},
    "runtime": {"hope", "memory_layers", "cl_methods"},
    "experiments": {"hope", "memory_layers", "cl_methods", "runtime"},
}
SPREAD_OVER_WORKERS = True


def _sources(package: str):
  return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
  """The modules of ours that `path` imports (dotted names)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return {n for n in names if n.split(".")[0] in PACKAGES}


def _is_entry_point(path: Path) -> bool:
  """A command: a `__main__.py`, or a module with an `if __name__ == "__main__":` block."""
  text = path.read_text()
  return path.name == "__main__.py" or 'if __name__ == "__main__":' in text


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_one_way(package):
  bad = []
  for path in _sources(package):
    for name in _imports(path):
      top = name.split(".")[0]
      if top != package and top not in ALLOWED[package]:
        bad.append(f"{path.relative_to(ROOT)} imports {name}")
  assert not bad, bad


def test_only_entry_points_import_the_cli_module():
  bad = [str(p.relative_to(ROOT)) for package in PACKAGES for p in _sources(package)
         if "experiments.cli" in _imports(p) and not _is_entry_point(p)]
  assert not bad, bad


def test_entry_scripts_are_short():
  entries = [p for p in _sources("experiments") if _is_entry_point(p)]
  assert len(entries) >= 10, entries
  long = {str(p.relative_to(ROOT)): n for p in entries
          if (n := len(p.read_text().splitlines())) > 60}
  assert not long, long


def test_one_function_runs_training_steps():
  """Only runtime.loop trains language models; the benchmarks time the same step. (The
  classifier runner of cl_methods, a library that imports nothing of ours, has its own.)"""
  users = {str(p.relative_to(ROOT)) for package in ("runtime", "experiments")
           for p in _sources(package)
           if "make_train_step(" in p.read_text() or "Trainer(" in p.read_text()}
  allowed = {"runtime/training.py", "runtime/loop.py", "experiments/compare/runs.py",
             "experiments/continual_lm/study.py",
             "experiments/benchmarks/train_step.py", "experiments/optimizer_measure.py"}
  assert users <= allowed, users - allowed
  compare = (ROOT / "experiments/compare/runs.py").read_text()
  assert "trainer.step(" not in compare and ".step(state" not in compare
