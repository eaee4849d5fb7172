"""The bad-input sweep: every CLI answers bad flags, config values and data files with one
`error:` line that names the problem, exit status 2, no traceback, and leaves nothing behind.

Cases that need a finished run (evaluate's, another model's checkpoint) are in
test_cli_runs.py and test_reliability.py; the README lists them all.
"""
import numpy as np
import pytest

from runtime import token_shards, tokenizers
from tests.helpers import TINY_FLAGS, run_cli

PRETRAIN = "experiments.pretrain"
TRANSFORMER = "--config=experiments/configs/transformer.py:tiny"
COMPARE = "experiments.compare"
FACTS = "experiments.fact_injection"
SPREAD_OVER_WORKERS = True  # each case is its own process: no shared cost

# id: (module, arguments, what the one error line must say). {inputs} is a folder of bad
# files made below; {workdir} is a fresh path that must still not exist afterwards.
CASES = {
    # pretrain: flags and config values
    "pretrain unknown config field": (PRETRAIN, ["--config.not_a_field=3"],
                                      "--config.not_a_field: the config has no field"),
    "pretrain unknown model field": (PRETRAIN, ["--config.model.heads=3"],
                                     "--config.model.heads: the config has no field"),
    "pretrain unknown size": (PRETRAIN, ["--config=experiments/configs/transformer.py:huge"],
                              "unknown config size 'huge'"),
    "pretrain missing config file": (PRETRAIN, ["--config=experiments/configs/nope.py"],
                                     "No such file or directory: 'experiments/configs/nope.py'"),
    "pretrain empty --config": (PRETRAIN, ["--config="],
                                "--config: Path to config file is an empty string"),
    "pretrain no --workdir": (PRETRAIN, ["--workdir="], "--workdir is required"),
    "pretrain positional argument": (PRETRAIN, ["extra"], "unexpected arguments ['extra']"),
    "pretrain unknown memory kernel": (PRETRAIN, ["--config=experiments/configs/titans_lmm.py:tiny",
                                                  "--config.model.kernel=cuda"],
                                       "kernel must be 'xla'"),
    "pretrain mesh does not divide": (PRETRAIN, ["--config.mesh.data=3"], "does not divide"),
    "pretrain mesh too large": (PRETRAIN, ["--config.mesh.data=16"], "asks for 16 devices"),
    "pretrain unknown rule axis": (PRETRAIN, ["--config.axis_rules.mlp=model"],
                                   "unknown mesh axis 'model'"),
    "pretrain zero batch": (PRETRAIN, ["--config.batch_size=0"],
                            "config.batch_size must be a positive"),
    "pretrain negative seq_len": (PRETRAIN, ["--config.seq_len=-5"],
                                  "config.seq_len must be a positive"),
    "pretrain negative learning rate": (PRETRAIN, ["--config.learning_rate=-0.1"],
                                        "config.learning_rate must be a positive number"),
    "pretrain warmup beyond steps": (PRETRAIN, ["--config.warmup_steps=50"],
                                     "config.warmup_steps (50) exceeds config.steps (12)"),
    "pretrain no checkpoints kept": (PRETRAIN, ["--config.keep_checkpoints=0"],
                                     "config.keep_checkpoints must be a positive"),
    "pretrain unknown on_nonfinite": (PRETRAIN, ["--config.on_nonfinite=ignore"],
                                      "config.on_nonfinite must be 'stop' or 'skip'"),
    "pretrain zero model width": (PRETRAIN, ["--config.model.dim=0"], "dim must be a positive"),
    "pretrain heads do not divide": (PRETRAIN, ["--config.model.num_heads=5"],
                                     "num_heads (5) must divide"),
    "pretrain vocabulary not bytes": (PRETRAIN, ["--config.model.vocab_size=1000"],
                                      "config.model.vocab_size (1000) does not match the bytes"),
    "pretrain batch vs mesh": (PRETRAIN, ["--config.batch_size=6", "--config.mesh.data=4"],
                               "divisible by"),
    "pretrain process id without coordinator": (PRETRAIN, ["--process_id=1"],
                                                "need --coordinator_address"),
    # pretrain: data
    "pretrain missing data path": (PRETRAIN, ["--config.data.source=/nonexistent/corpus"],
                                   "does not exist"),
    "pretrain empty data file": (PRETRAIN, ["--config.data.source={inputs}/empty.txt"],
                                 "is empty"),
    "pretrain empty data folder": (PRETRAIN, ["--config.data.source={inputs}/empty_dir"],
                                   "no non-empty text files"),
    "pretrain binary data file": (PRETRAIN, ["--config.data.source={inputs}/binary.bin"],
                                  "binary.bin"),
    "pretrain zero validation share": (PRETRAIN, ["--config.data.validation_percent=0"],
                                       "validation_percent must be an integer in 1..99"),
    "pretrain unwritable workdir": (PRETRAIN, ["--workdir={inputs}/a_file/run"], "is not writable"),
    "pretrain corrupt shard": (PRETRAIN, ["--config.data.source={inputs}/corrupt_shards"],
                               "train-00000.array_record' is corrupt"),
    "pretrain missing shard": (PRETRAIN, ["--config.data.source={inputs}/missing_shard"],
                               "train-00000.array_record' is missing"),
    # prepare_data
    "prepare_data no --out": ("experiments.prepare_data", [], "--out is required"),
    "prepare_data existing --out": ("experiments.prepare_data", ["--out={inputs}"],
                                    "exists; give a new directory"),
    "prepare_data vocabulary too small": ("experiments.prepare_data",
                                          ["--out={workdir}", "--vocab_size=100"],
                                          "--vocab_size must be 0 (bytes) or at least 260"),
    "prepare_data missing source": ("experiments.prepare_data",
                                    ["--out={workdir}", "--source=/nonexistent/corpus"],
                                    "--source: '/nonexistent/corpus' does not exist"),
    "prepare_data tokenizer not a model": ("experiments.prepare_data",
                                           ["--out={workdir}", "--tokenizer={inputs}/small.txt"],
                                           "small.txt': not a SentencePiece model"),
    # evaluate without a run
    "evaluate empty workdir": ("experiments.evaluate", ["--workdir={workdir}"], "no checkpoints"),
    "evaluate no --workdir": ("experiments.evaluate", [], "--workdir is required"),
    "evaluate mesh syntax": ("experiments.evaluate", ["--workdir={inputs}", "--mesh=data=2"],
                             "--mesh: 'data=2' is not axis:size"),
    # generate without a run
    "generate no prompt": ("experiments.generate", ["--workdir={workdir}"],
                           "--prompt: give at least one prompt"),
    "generate empty workdir": ("experiments.generate", ["--workdir={workdir}", "--prompt=a"],
                               "no checkpoints"),
    "generate negative temperature": ("experiments.generate",
                                      ["--workdir={workdir}", "--prompt=a", "--temperature=-1"],
                                      "--temperature must be a finite number >= 0"),
    # continual: config values and data files
    "continual unknown method": ("experiments.continual", ["--config.method=magic"],
                                 "config.method"),
    "continual npz of the wrong shape": (
        "experiments.continual", ["--config.benchmark=split_npz",
                                  "--config.data_dir={inputs}/wrong_shape.npz"], "need x of shape"),
    "continual npz without arrays": (
        "experiments.continual", ["--config.benchmark=split_npz",
                                  "--config.data_dir={inputs}/no_arrays.npz"], "must hold x_train"),
    "continual missing data folder": (
        "experiments.continual", ["--config.benchmark=split_idx",
                                  "--config.data_dir={inputs}/nowhere"], "does not exist"),
    # continual_lm: methods, domains and streams
    "continual_lm unknown method": ("experiments.continual_lm", ["--config.methods=finetune,magic"],
                                    "config.methods: unknown name(s) ['magic']"),
    "continual_lm method that cannot train an LM": (
        "experiments.continual_lm", ["--config.methods=finetune,xdg"],
        "method xdg cannot train a language model"),
    "continual_lm unknown domain": ("experiments.continual_lm",
                                    ["--config.domains=stdlib,klingon"],
                                    "config.domains: unknown domain 'klingon'"),
    "continual_lm domain too small to validate": (
        "experiments.continual_lm", ["--config.domains=man_de,{inputs}/small.txt"],
        "fewer than config.validation_sequences"),
    "continual_lm boundary method on a task-free stream": (
        "experiments.continual_lm", ["--config.stream=task_free"],
        "method ewc cannot run on a task-free stream"),
    # compare: arms, studies, variants, seeds, workers and the probe's distance
    "compare unknown arm": (COMPARE, ["--config.arms=transformer,gpt5"],
                            "config.arms: unknown name(s) ['gpt5']"),
    "compare unknown study": (COMPARE, ["--config.studies=recall,vibes"],
                              "config.studies: unknown name(s) ['vibes']"),
    "compare unknown ablation": (COMPARE, ["--config.ablation.variants=hope,hope_no_magic"],
                                 "config.ablation.variants: unknown name(s) ['hope_no_magic']"),
    "compare zero seeds": (COMPARE, ["--config.seeds=0"], "config.seeds must be a positive"),
    "compare more workers than cores": (COMPARE, ["--config.workers=4096"],
                                        "config.workers (4096) is more than the"),
    "compare distance inside the window": (
        COMPARE, ["--config.repeat.distance=32"],
        "config.repeat.distance (32) must be larger than every arm's attention window"),
    # benchmark and the crash check
    "benchmark unknown model": ("experiments.benchmark", ["--models=gpt:tiny"],
                                "--models: unknown config 'gpt'"),
    "benchmark unknown size": ("experiments.benchmark", ["--models=transformer:huge"],
                               "--models transformer:huge"),
    "benchmark zero runs": ("experiments.benchmark", ["--runs=0"],
                            "--runs and --steps_per_run must be positive"),
    "benchmark unknown cl method": ("experiments.benchmark", ["--suite=cl", "--cl_methods=ewc,sgd"],
                                    "--cl_methods: unknown ['sgd']"),
    "accelerator_check no --out": ("experiments.accelerator_check", ["--size=tiny"],
                                   "--out is required"),
    "accelerator_check --out folder missing": (
        "experiments.accelerator_check", ["--out={workdir}/check.json"], "--out: folder"),
    "accelerator_check unknown section": (
        "experiments.accelerator_check", ["--out={inputs}/check.json", "--sections=lm,flops"],
        "--sections: unknown ['flops']"),
    # fact_injection: t in 1..N (test_fact_injection.py), the stream, the table's size, methods
    "fact_injection no stream batches": (FACTS, ["--config.stream_batches=0"],
                                         "config.stream_batches must be"),
    "fact_injection stream batches above the people": (
        FACTS, ["--config.stream_batches=64"],
        "config.stream_batches (64) exceeds config.facts.num_new (16)"),
    "fact_injection facts per step": (FACTS, ["--config.facts_per_step=0"],
                                      "config.facts_per_step must be"),
    "fact_injection unknown method": (FACTS, ["--config.methods=smf,sgd"],
                                      "config.methods: unknown name(s) ['sgd']"),
    "fact_injection table too large": (FACTS, ["--config.model.num_slots=1073741824"],
                                       "does not fit"),
    "old inject_facts command": ("experiments.inject_facts", [],
                                 "now `python -m experiments.fact_injection"),
    "old kill_test command": ("experiments.kill_test", [], "now `python -m experiments.crash_check`"),
    "old inject_facts config": ("experiments.fact_injection",
                                ["--config=experiments/configs/inject_facts.py",
                                 "--workdir={workdir}"],
                                "is now experiments/configs/fact_injection.py"),
    "crash_check zero kills": ("experiments.crash_check", [TRANSFORMER, "--workdir={workdir}",
                                                      "--kills=0"], "--kills must be at least 1"),
    "crash_check used workdir": ("experiments.crash_check", [TRANSFORMER, "--workdir={inputs}"],
                               "is not empty"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  folder = tmp_path_factory.mktemp("bad_inputs")
  (folder / "empty.txt").write_text("")
  (folder / "empty_dir").mkdir()
  (folder / "binary.bin").write_bytes(bytes(range(256)) * 64)
  (folder / "a_file").write_text("not a folder")
  (folder / "small.txt").write_text("a few words of text\n" * 200)
  np.savez(folder / "wrong_shape.npz", x_train=np.zeros((10, 4)), y_train=np.zeros((7,), int))
  np.savez(folder / "no_arrays.npz", images=np.zeros((10, 4)))
  text = [b"a few words of text\n" * 200] * 4
  for name in ("corrupt_shards", "missing_shard"):
    token_shards.write(folder / name, dict(train=text, validation=text[:1]),
                       tokenizers.ByteTokenizer(), description="test")
  shard = folder / "corrupt_shards" / "train-00000.array_record"
  shard.write_bytes(shard.read_bytes()[:-1] + b"x")
  (folder / "missing_shard" / "train-00000.array_record").unlink()
  return folder


def _arguments(module, args):
  """The case's arguments after a valid baseline for its CLI (so only the case is wrong)."""
  baseline = {PRETRAIN: [*TINY_FLAGS, "--workdir={workdir}"],
              "experiments.continual": ["--config=experiments/configs/continual.py",
                                        "--workdir={workdir}"],
              "experiments.continual_lm": ["--config=experiments/configs/continual_lm.py",
                                           "--workdir={workdir}"],
              COMPARE: ["--config=experiments/configs/compare.py", "--workdir={workdir}"],
              FACTS: ["--config=experiments/configs/fact_injection.py",
                      "--workdir={workdir}"]}.get(module, [])
  for flag in ("--config=", "--workdir="):
    if any(a.startswith(flag) for a in args):
      baseline = [b for b in baseline if not b.startswith(flag)]
  # --config=FILE must precede the --config.FIELD overrides.
  return sorted([*baseline, *args], key=lambda a: not a.startswith("--config="))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_error(case, inputs, tmp_path):
  module, args, expected = CASES[case]
  workdir = tmp_path / "workdir"
  before = sorted(p.name for p in inputs.rglob("*"))
  arguments = [a.format(inputs=inputs, workdir=workdir) for a in _arguments(module, args)]
  result = run_cli(module, *arguments)
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert not workdir.exists() or not any(workdir.iterdir()), "a partial workdir was left"
  assert sorted(p.name for p in inputs.rglob("*")) == before, "an input folder was written to"
