"""Smoke test of the benchmark suites at tiny sizes (the measurements themselves are not tests)."""
import json

from experiments.benchmarks import (continual_grid, decoding, loader, product_key,
                                    sharded_step, smf, titans_memory, train_step)
from experiments.configs import fact_injection
from runtime import text_data
from tests.helpers import run_cli

SPREAD_OVER_WORKERS = True  # no shared fixtures
TINY_MODEL = dict(dim=32, num_layers=1, num_heads=2, mlp_dim=64)
ONCE = dict(warmup=1, runs=1)


def test_lm_suite():
  result = train_step.run(["transformer:tiny"], seq_len=16, batch_size=8, steps_per_run=1,
                          overrides=TINY_MODEL, **ONCE)
  row, = result["rows"]
  assert row["model"] == "transformer:tiny" and row["tokens_per_sec"] > 0
  assert 0 < row["utilisation"] < 1 and row["peak_memory_bytes"] > 0
  assert "transformer:tiny" in train_step.table(result)


def test_generate_suite():
  result = decoding.run(["transformer:tiny"], ["transformer:tiny"], batches=(1, 2),
                        prompt_len=4, new_tokens=2, contexts=(8, 16), piece=8, probe_tokens=2,
                        warmup=0, runs=1)
  row, = result["rows"]
  assert row["tokens_per_second_batch1"] > 0 and row["tokens_per_second_batch2"] > 0
  assert row["ms_per_token_at_8"] > 0 and row["ms_per_token_at_16"] > 0
  assert "transformer:tiny" in decoding.table(result)


def test_loader_suite(tmp_path):
  for f in sorted((text_data.stdlib_root() / "json").glob("*.py")):
    (tmp_path / f.name).write_bytes(f.read_bytes() * 3)
  result = loader.run(model="transformer:tiny", source=str(tmp_path), vocab_size=400,
                      warmup=0, runs=1, steps_per_run=1)
  assert [r["what"] for r in result["rows"]] == ["step", "loader, 0 workers", "loader, 2 workers"]
  assert all(r["tokens_per_sec"] > 0 for r in result["rows"])
  assert "loader, 2 workers" in loader.table(result)


def test_smf_suite():
  config = fact_injection.get_config()
  config.model.update(dim=32, num_layers=2, num_heads=2, mlp_dim=64, memory_layers=(1,),
                      num_slots=32 ** 2, memory_heads=2, key_dim=8, top_k=4)
  result = smf.run(config=config, **ONCE)
  assert [r["step"] for r in result["rows"]] == ["table frozen", "SMF, row-sparse", "SMF, dense"]
  assert all(r["ms"] > 0 for r in result["rows"]) and "SMF, dense" in smf.table(result)


def test_memory_suite():
  result = titans_memory.run(batch=1, seq_len=32, dim=16, heads=(2,), chunk_sizes=(8,), **ONCE)
  assert [r["implementation"] for r in result["rows"]] == ["reference, b=1", "chunked, b=8",
                                                            "projections only"]
  assert all(r["seconds"] > 0 and r["compiled_bytes"] > 0 for r in result["rows"])
  assert "chunked, b=8" in titans_memory.table(result)


def test_pkm_suite_on_eight_devices():
  shape = product_key.Shape(embed=16, value_dim=16, heads=2, key_dim=8, top_k=2, batch=8,
                            seq_len=4)
  result = product_key.run(sizes=(16,), memory_slots=64, shape=shape, **ONCE)
  assert [r["slots"] for r in result["rows"]] == [16]
  # No device holds the whole table or its gradient.
  for m in result["memory_rows"]:
    assert m["shard_bytes"] * 8 == m["table_bytes"] == m["gradient_shard_bytes"] * 8
  assert "rows over fsdp=8" in product_key.table(result)


def test_sharded_suite_agrees_with_one_device():
  result = sharded_step.run("transformer:tiny", meshes=(dict(data=1), dict(data=4, tensor=2)),
                            overrides=TINY_MODEL, batch_size=8, seq_len=16, **ONCE)
  assert [r["devices"] for r in result["rows"]] == [1, 8]
  assert result["rows"][1]["loss_difference"] < 1e-5


def test_cl_suite():
  result = continual_grid.run(overrides=dict(method="finetune", scenario="task",
                                             steps_per_context=2, eval_every=2, n_contexts=2,
                                             curve_examples=8, consolidation_examples=8),
                              warmup=0, runs=1)
  assert result["rows"][0]["pairs"] == 1 and result["rows"][0]["seconds"] > 0


def test_cl_suite_times_chosen_methods_side_by_side():
  result = continual_grid.run(methods=["finetune", "ewc"], overrides={
      "steps_per_context": 2, "eval_every": 2, "n_contexts": 2, "curve_examples": 8,
      "consolidation_examples": 8, "model.hidden": (8,)}, warmup=0, runs=1)
  assert [r["method"] for r in result["rows"]] == ["finetune", "ewc"]
  assert result["rows"][0]["relative"] == 1.0 and result["rows"][1]["seconds"] > 0
  assert "ewc" in continual_grid.table(result)


def test_cli_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  proc = run_cli("experiments.benchmark", "--suite=lm", "--models=transformer:tiny",
                 "--seq_len=8", "--batch_size=8", "--runs=1", "--warmup=0",
                 "--steps_per_run=1", f"--out={out}")
  assert proc.returncode == 0, proc.stderr
  results = json.loads(out.read_text())
  assert {"date", "jax", "machine", "load_at_start"} <= set(results)
  assert results["suites"]["lm"]["rows"][0]["model"] == "transformer:tiny"


def test_accelerator_check_runs_end_to_end_at_the_tiny_size(tmp_path):
  out = tmp_path / "accelerator.json"
  proc = run_cli("experiments.accelerator_check", "--size=tiny", f"--out={out}", timeout=600)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(out.read_text())
  assert set(result["sections"]) == {"lm", "kernels", "memory_lm", "sharded"}
  lm = result["sections"]["lm"]
  assert set(lm) == {"transformer", "hope", "titans_lmm"}
  assert lm["transformer"]["relative_tokens_per_sec"] == 1.0 and lm["hope"]["tokens_per_sec"] > 0
  for row in result["sections"]["kernels"]["rows"].values():
    assert row["max_gradient_difference"] <= 1e-4 * row["max_gradient"]
  assert result["sections"]["memory_lm"]["num_slots"] == 16 ** 2
  assert [r["devices"] for r in result["sections"]["sharded"]["rows"]] == [1, 8]
  assert result["met"] == {}  # the targets are judged on accelerators only

