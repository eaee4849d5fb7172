r"""Generates text from a checkpoint of a pretraining run.

  python -m experiments.generate --workdir=DIR [--step=N] --prompt="def " [--prompt=...] \
      [--prompts_file=F] [--max_new_tokens=200] [--temperature=0.8] [--top_k=0] [--top_p=0.95] \
      [--seed=0] [--mesh=data:-1] [--context_file=F]

Reads the run's config from the checkpoint (the latest intact one unless --step), restores the
parameters onto the mesh (any shape: the checkpoint need not come from the same mesh), and
continues every prompt (each --prompt, then each line of --prompts_file; a literal "\n" in a
prompt is a newline) by --max_new_tokens bytes, decoding incrementally: attention reads a
key-value cache, Titans and HOPE memories and CMS levels carry their state and chunk clocks
token by token (`runtime.generation`). Temperature 0 is greedy decoding. Prints each
continuation and the decoding speed (tokens per second, compile excluded).

--context_file=F: the file's bytes are read before every prompt with every state carried,
so the memories learn from it at test time (attention attends to it).
"""
from pathlib import Path

import jax
from absl import flags
from absl import logging
from flax import nnx

from experiments import cli
from runtime import evaluation, generation, training

WORKDIR = flags.DEFINE_string("workdir", None, "The pretraining run's workdir.")
STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest intact one).")
PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable); \\n is a newline.")
PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "A file with one prompt per line.")
MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Bytes to generate per prompt.")
TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0: greedy).")
TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely bytes (0: all).")
TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the smallest set of bytes with "
                           "this much probability (1: all).")
SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
CONTEXT_FILE = flags.DEFINE_string("context_file", None, "A document read before every prompt, "
                                   "the states carried (test-time learning).")
MESH = flags.DEFINE_string("mesh", "data:-1", "Mesh as axis:size pairs, e.g. data:2,tensor:4.")


def read_prompts() -> list[bytes]:
  """The prompts of --prompt and --prompts_file, as UTF-8 bytes; UsageError if none, if one
  is empty or if the file is missing."""
  prompts = [p.replace("\\n", "\n") for p in PROMPT.value]
  if PROMPTS_FILE.value:
    path = Path(PROMPTS_FILE.value).expanduser()
    if not path.is_file():
      raise cli.UsageError(f"--prompts_file {str(path)!r} does not exist")
    prompts += [line.replace("\\n", "\n") for line in path.read_text().splitlines()]
  if not prompts:
    raise cli.UsageError("give at least one --prompt or a --prompts_file")
  if any(not p for p in prompts):
    raise cli.UsageError(f"prompt {[not p for p in prompts].index(True) + 1} is empty; "
                         "every prompt needs at least one character")
  return [p.encode() for p in prompts]


def main(argv):
  cli.check_arguments(argv, workdir=WORKDIR)
  cli.initialize_distributed()
  prompts = read_prompts()
  if MAX_NEW.value <= 0:
    raise cli.UsageError(f"--max_new_tokens must be positive, got {MAX_NEW.value}")
  context = b""
  if CONTEXT_FILE.value:
    path = Path(CONTEXT_FILE.value).expanduser()
    if not path.is_file():
      raise cli.UsageError(f"--context_file {str(path)!r} does not exist")
    context = path.read_bytes()
  sampling = generation.Sampling(TEMPERATURE.value, TOP_K.value, TOP_P.value)
  try:
    sampling.check()
  except ValueError as e:
    raise cli.UsageError(f"--{e}") from None
  workdir = str(Path(WORKDIR.value).expanduser().absolute())
  ckpt, step, config = evaluation.checkpoint_to_read(workdir, STEP.value)
  run = training.prepare(config, mesh_sizes=cli.parse_mesh(MESH.value, "--mesh"))
  try:  # shapes only: refuses a model that cannot decode one token at a time
    jax.eval_shape(lambda p: nnx.merge(run.graphdef, p).init_decode_state(1, 1),
                   run.abstract_params)
  except ValueError as e:
    raise cli.UsageError(f"{config.model.name} cannot generate: {e}") from None
  with jax.set_mesh(run.mesh):
    params = evaluation.restore_params(ckpt, step, run)
    out = generation.generate(run, params, prompts, max_new_tokens=MAX_NEW.value,
                              sampling=sampling, seed=SEED.value, context=context)
  if jax.process_index() == 0:
    for prompt, text in zip(prompts, out.texts):
      print(f"--- {prompt.decode(errors='replace')!r}")
      print(prompt.decode(errors="replace") + text.decode(errors="replace"))
    logging.info("%s step %d: %d bytes in %.2f s (%.1f tokens/s, batch %d; compile %.1f s)",
                 config.model.name, step, sum(len(t) for t in out.texts), out.seconds,
                 out.tokens_per_second, len(prompts), out.compile_seconds)


if __name__ == "__main__":
  cli.run(main)
