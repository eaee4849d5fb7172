"""Where training metrics go: `metrics.jsonl`, `perf.jsonl`, absl logs, TensorBoard.

`metrics.jsonl` holds what the run computes (loss, gradient norm, learning rate): with the
same seed and config it is identical from run to run on CPU. `perf.jsonl` holds timings
(steps/s, tokens/s, MFU, ETA), which vary. TensorBoard event files are written when the
`tensorboard` package is installed. Only process 0 writes.
"""
import json
import time
from pathlib import Path

import jax
from absl import logging


class MetricsWriter:

  def __init__(self, workdir: str | Path, resume_step: int = 0):
    self.workdir = Path(workdir)
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    for name in ("metrics.jsonl", "perf.jsonl", "curves.jsonl"):
      _truncate_after(self.workdir / name, resume_step)
    try:
      from tensorboard.compat.proto import event_pb2, summary_pb2
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      self._tb = EventFileWriter(str(self.workdir / "tensorboard"))
      self._protos = (event_pb2, summary_pb2)
    except ImportError:
      logging.info("tensorboard is not installed; no event files")

  def write(self, filename: str, step: int, values: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
    with open(self.workdir / filename, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      event_pb2, summary_pb2 = self._protos
      summary = summary_pb2.Summary(value=[
          summary_pb2.Summary.Value(tag=k, simple_value=float(v))
          for k, v in row.items() if k != "step" and isinstance(v, (int, float))])
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _plain(v):
  return v.item() if hasattr(v, "item") else v


def _truncate_after(path: Path, step: int) -> None:
  """Drops rows past `step` (steps a crashed run logged after its last checkpoint), and a
  last line cut short by a kill."""
  if not path.exists():
    return
  rows = []
  for line in path.read_text().splitlines():
    try:
      if json.loads(line)["step"] <= step:
        rows.append(line)
    except (ValueError, KeyError, TypeError):
      pass
  tmp = path.with_suffix(".tmp")
  tmp.write_text("".join(r + "\n" for r in rows))
  tmp.replace(path)
