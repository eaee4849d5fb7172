"""The CLIs as a user runs them: multi-process, determinism, one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time

import portpicker
import pytest

from runtime import text_data, token_shards, tokenizers
from tests.helpers import ROOT, TINY_FLAGS, run_cli, xla_flags


def test_two_processes_train_get_killed_and_resume(tmp_path):
  """Two processes joined by jax.distributed on loopback (4 CPU devices each, one 4x2 mesh)
  train on SentencePiece shards (each reading its half of every batch) and checkpoint; both
  are SIGKILLed; the same two commands resume and finish."""
  workdir, corpus = tmp_path / "multi", tmp_path / "corpus"
  # With the suite's compilation cache, which a multi-process CPU run must ignore: on jax
  # 0.12.1 the resumed pair, loading its programs from it, hung.
  assert os.environ.get("JAX_COMPILATION_CACHE_DIR")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(4))
  files = sorted((text_data.stdlib_root() / "json").glob("*.py"))
  docs = [f.read_bytes() for f in files] * 4
  tokenizer = tokenizers.SentencePieceTokenizer(tokenizers.train_sentencepiece(docs, 400))
  token_shards.write(corpus, dict(train=docs[1:], validation=docs[:1]), tokenizer,
                     description="json", record_tokens=256, shard_records=4)

  def start(port):
    return [subprocess.Popen(
        [sys.executable, "-m", "experiments.pretrain", *TINY_FLAGS, "--config.steps=30",
         "--config.checkpoint_every=3", "--config.log_every=3", "--config.mesh.tensor=2",
         f"--config.data.source={corpus}",
         f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
         "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]

  procs = start(portpicker.pick_unused_port())
  deadline = time.time() + 240
  while not (workdir / "checkpoints" / "6").exists() and time.time() < deadline:
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  outputs = [p.communicate(timeout=60)[0] for p in procs]
  assert all(p.returncode == -signal.SIGKILL for p in procs), outputs[0][-3000:]
  assert "'data': 4, 'fsdp': 1, 'tensor': 2" in outputs[0]  # one mesh over both processes
  assert "(sentencepiece:tokenizer.model, vocabulary 400)" in outputs[0]
  assert not (workdir / "checkpoints" / "30").exists(), "the run ended before it was killed"

  procs = start(portpicker.pick_unused_port())
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert all("resumed from" in out for out in outputs)
  assert all("not using the compilation cache" in out for out in outputs)
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(3, 31, 3))
  assert (workdir / "checkpoints" / "30" / "params").is_dir()


# metrics.jsonl of `pretrain` on transformer.py:tiny with SMALL_RUN's flags (8 fake devices,
# XLA level 0), one file per Python version: the default corpus is the running Python's own
# standard library. Python 3.11's was recorded with the code before the training runtime was
# restructured, 3.12's (jax 0.12.0.1) after, 3.13's (jax 0.12.1) later still.
PYTHON = f"py{sys.version_info.major}.{sys.version_info.minor}"
GOLDEN_METRICS = ROOT / "tests" / "experiments" / "golden" / f"transformer_tiny_4_steps.{PYTHON}.metrics.jsonl"
SMALL_RUN = (*TINY_FLAGS, "--config.steps=4", "--config.log_every=1")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("small_run")
  relative = os.path.relpath(workdir, ROOT)  # as the README's command gives it
  result = run_cli("experiments.pretrain", *SMALL_RUN, f"--workdir={relative}")
  assert result.returncode == 0, result.stderr[-2000:]
  evaluation = run_cli("experiments.evaluate", f"--workdir={relative}")
  assert evaluation.returncode == 0, evaluation.stderr[-2000:]
  assert (workdir / "eval" / "step_4.json").exists()
  return workdir


def _snapshot(path):
  return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*")
                if p.is_file()) if path.exists() else None


def test_same_seed_and_config_give_identical_metrics(small_run, tmp_path):
  """Two runs byte for byte; the run recorded before the restructuring to float32 rounding
  (on another CPU, XLA's kernels may round the last bit differently)."""
  again = tmp_path / "again"
  result = run_cli("experiments.pretrain", *SMALL_RUN, f"--workdir={again}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert (again / "metrics.jsonl").read_bytes() == (small_run / "metrics.jsonl").read_bytes()
  if not GOLDEN_METRICS.exists():
    pytest.fail(f"no golden metrics for {PYTHON} (the default corpus is this Python's standard "
                f"library): check {small_run / 'metrics.jsonl'} and record it as {GOLDEN_METRICS}")
  rows = [[json.loads(line) for line in path.read_text().splitlines()]
          for path in (small_run / "metrics.jsonl", GOLDEN_METRICS)]
  assert [sorted(r) for r in rows[0]] == [sorted(r) for r in rows[1]]
  for got, recorded in zip(*rows):
    assert got == pytest.approx(recorded, rel=1e-6), got["step"]


def test_checkpoint_of_another_model_is_refused_and_kept(small_run):
  before = _snapshot(small_run)
  result = run_cli("experiments.pretrain", *TINY_FLAGS, "--config.model.dim=64",
                   f"--workdir={small_run}")
  _assert_clean_error(result, "different model (model.dim: 32 saved, 64 requested)")
  assert _snapshot(small_run) == before


@pytest.mark.parametrize("args, expected", [
    (["--step=7"], "no such checkpoint"),
    (["--mesh=data:3"], "does not divide"),
    (["--context=50"], "must be a positive multiple of the training seq_len"),
], ids=["unknown step", "mesh does not divide", "context not a multiple"])
def test_evaluate_bad_input(small_run, args, expected):
  before = _snapshot(small_run)
  _assert_clean_error(run_cli("experiments.evaluate", f"--workdir={small_run}", *args), expected)
  assert _snapshot(small_run) == before


def test_generate_from_a_checkpoint(small_run):
  args = ("experiments.generate", f"--workdir={small_run}", "--prompt=def ",
          "--prompt=import os\\n", "--max_new_tokens=5", "--temperature=0.8", "--top_p=0.9")
  first, again = run_cli(*args), run_cli(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  assert first.stdout == again.stdout          # same seed, same text
  assert first.stdout.count("--- ") == 2 and "--- 'import os\\n'" in first.stdout
  assert "tokens/s" in first.stderr


def test_generate_keeps_a_read_context_for_later_runs(small_run, tmp_path):
  """--save_context keeps the state after --context_file; --context_state continues from
  it exactly as reading the file again does."""
  doc = tmp_path / "doc.txt"
  doc.write_text("import os\nimport sys\n" * 4)
  args = ("experiments.generate", f"--workdir={small_run}", "--prompt=import ",
          "--prompt=def ", "--max_new_tokens=5", "--temperature=0")
  read = run_cli(*args, f"--context_file={doc}", f"--save_context={tmp_path / 'ctx'}",
                 "--context_room=64")
  loaded = run_cli(*args, f"--context_state={tmp_path / 'ctx'}")
  assert read.returncode == 0 and loaded.returncode == 0, (read.stderr + loaded.stderr)[-3000:]
  assert read.stdout == loaded.stdout and read.stdout.count("--- ") == 2
  meta = json.loads((tmp_path / "ctx" / "context.json").read_text())
  assert (meta["tokens"], meta["room"], meta["model"]) == (84, 64, "transformer")


def _fake_context(folder, **meta):
  folder.mkdir()
  (folder / "context.json").write_text(json.dumps(
      dict(dict(tokens=0, room=64, model="transformer", vocab_size=256), **meta)))
  return folder


@pytest.mark.parametrize("args, expected", [
    (["--prompt="], "prompt 1 is empty"),
    (["--prompt=a", "--context_file={doc}", "--context_state={ctx}"], "give one"),
    (["--prompt=a", "--context_file={doc}", "--save_context={tmp}"], "exists; give a new folder"),
    (["--prompt=a", "--save_context={tmp}/new"], "--save_context needs --context_file"),
    (["--prompt=a", "--context_state={tmp}"], "is not a saved context"),
    (["--prompt=a", "--context_state={other}"], "was read by hope"),
    (["--prompt=abc", "--max_new_tokens=62", "--context_state={ctx}"], "has room for 64"),
    (["--prompt=a", "--max_new_tokens=0"], "--max_new_tokens must be positive"),
    (["--prompts_file=/nonexistent/prompts.txt"], "does not exist"),
    (["--prompt=a", "--context_file=/nonexistent/context.txt"], "does not exist"),
    (["--prompt=a", "--top_p=1.5"], "--top_p must be in (0, 1]"),
    (["--prompt=a", "--step=7"], "no such checkpoint"),
    (["--prompt=a", "--tokenizer={model}"], "tokenizer has 400 ids, the checkpoint's model 256"),
    (["--prompt=a", "--tokenizer=/nonexistent.model"], "does not exist"),
], ids=["empty prompt", "context file and state", "save to an existing folder",
        "save without a context file", "not a saved context", "context of another model",
        "no room left", "no new tokens", "missing prompts file", "missing context file",
        "top_p out of range", "unknown step", "tokenizer of another vocabulary",
        "missing tokenizer"])
def test_generate_bad_input(small_run, args, expected, tmp_path):
  model, doc = tmp_path / "other.model", tmp_path / "doc.txt"
  doc.write_text("import os\n")
  folders = dict(ctx=_fake_context(tmp_path / "ctx"),
                 other=_fake_context(tmp_path / "other", model="hope"))
  if any("{model}" in a for a in args):
    docs = [f.read_bytes() for f in sorted((text_data.stdlib_root() / "json").glob("*.py"))]
    model.write_bytes(tokenizers.train_sentencepiece(docs, 400))
  before = _snapshot(small_run)
  _assert_clean_error(run_cli("experiments.generate", f"--workdir={small_run}",
                              *(a.format(model=model, doc=doc, tmp=tmp_path, **folders)
                                for a in args)), expected)
  assert _snapshot(small_run) == before


def _assert_clean_error(result, expected):
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
