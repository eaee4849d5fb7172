"""The run's folder: checked before anything is written; JSON results written atomically."""
import json
import os
from pathlib import Path

from runtime.errors import UsageError


def check_workdir(workdir) -> Path:
  """Creates the workdir if needed and proves it writable, or raises UsageError; returns its
  absolute path (orbax needs absolute paths)."""
  path = Path(os.path.expanduser(str(workdir))).absolute()
  if path.exists() and not path.is_dir():
    raise UsageError(f"--workdir {str(path)!r} is a file, not a directory")
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_probe_{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise UsageError(f"--workdir {str(path)!r} is not writable: {e.strerror}") from e
  return path


def write_json(path: Path, value) -> None:
  """Writes `value` as JSON to `path` through a temporary file and a rename (atomic)."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=1) + "\n")
  tmp.replace(path)
