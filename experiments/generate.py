r"""Generates text from a checkpoint: `python -m experiments.generate --workdir=DIR --prompt="def "`.

Restores the checkpoint (the latest intact one unless --step) onto --mesh and continues each
--prompt and each line of --prompts_file ("\n" is a newline) by --max_new_tokens tokens of
the run's tokenizer (or --tokenizer), decoding one token at a time (`runtime.generation`;
--temperature=0 is greedy). --context_file is read before every prompt with every state
carried (test-time learning). Prints the texts and the speed (tokens/s, compile excluded).
"""
from pathlib import Path

import jax
from absl import flags
from absl import logging

from experiments import cli
from runtime import generation

WORKDIR = flags.DEFINE_string("workdir", None, "The pretraining run's workdir.")
STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest intact one).")
PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable); \\n is a newline.")
PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "A file with one prompt per line.")
CONTEXT_FILE = flags.DEFINE_string("context_file", None, "A document read before every prompt.")
MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per prompt.")
TOKENIZER = flags.DEFINE_string("tokenizer", None, "A SentencePiece .model (default: the run's).")
TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0: greedy).")
TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling probability mass (1: all).")
SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
MESH = flags.DEFINE_string("mesh", "data:-1", "Mesh as axis:size pairs, e.g. data:2,tensor:4.")


def read_file(flag) -> bytes:
  path = Path(flag.value).expanduser()
  if not path.is_file():
    raise cli.UsageError(f"--{flag.name} {str(path)!r} does not exist")
  return path.read_bytes()


def main(argv):
  cli.check_arguments(argv, workdir=WORKDIR)
  cli.initialize_distributed()
  lines = read_file(PROMPTS_FILE).decode().splitlines() if PROMPTS_FILE.value else []
  prompts = [p.replace("\\n", "\n") for p in PROMPT.value + lines]
  if not prompts or not all(prompts):
    raise cli.UsageError(f"prompt {prompts.index('') + 1} is empty" if prompts else
                         "give at least one --prompt or a --prompts_file")
  config, step, out = generation.from_checkpoint(
      WORKDIR.value, STEP.value, cli.parse_mesh(MESH.value, "--mesh"),
      [p.encode() for p in prompts], max_new_tokens=MAX_NEW.value, seed=SEED.value,
      sampling=generation.Sampling(TEMPERATURE.value, TOP_K.value, TOP_P.value),
      context=read_file(CONTEXT_FILE) if CONTEXT_FILE.value else b"", tokenizer=TOKENIZER.value)
  if jax.process_index() == 0:
    for prompt, text in zip(prompts, out.texts):
      print(f"--- {prompt!r}\n{prompt}{text.decode(errors='replace')}")
    logging.info("%s step %d: %.1f tokens/s (batch %d; compile %.1f s)", config.model.name,
                 step, out.tokens_per_second, len(prompts), out.compile_seconds)


if __name__ == "__main__":
  cli.run(main)
