r"""Generates text from a checkpoint: `python -m experiments.generate --workdir=DIR --prompt="def "`.

Restores the checkpoint (the latest intact one unless --step) onto --mesh and continues each
--prompt and line of --prompts_file ("\n" is a newline) by --max_new_tokens tokens of the
run's tokenizer (or --tokenizer), one at a time (`runtime.generation`; --temperature=0 is
greedy), after --context_file (read first, states carried: test-time learning) or a
--context_state kept by --save_context. Prints the texts and tokens/s (compile excluded).
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
SAVE_CONTEXT = flags.DEFINE_string("save_context", None, "New folder: keep the read context.")
CONTEXT_STATE = flags.DEFINE_string("context_state", None, "A --save_context folder to start from.")
CONTEXT_ROOM = flags.DEFINE_integer("context_room", 2048, "Tokens a saved context can still read.")
MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per prompt.")
TOKENIZER = flags.DEFINE_string("tokenizer", None, "A SentencePiece .model (default: the run's).")
TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0: greedy).")
TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling probability mass (1: all).")
SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
MESH = flags.DEFINE_string("mesh", "data:-1", "Mesh as axis:size pairs, e.g. data:2,tensor:4.")


def read_file(flag) -> bytes:
  if flag.value and not (path := Path(flag.value).expanduser()).is_file():
    raise cli.UsageError(f"--{flag.name} {str(path)!r} does not exist")
  return path.read_bytes() if flag.value else b""


def main(argv):
  cli.check_arguments(argv, workdir=WORKDIR)
  cli.initialize_distributed()
  prompts = [p.replace("\\n", "\n") for p in PROMPT.value + read_file(PROMPTS_FILE).decode().splitlines()]
  config, step, out = generation.from_checkpoint(
      WORKDIR.value, STEP.value, cli.parse_mesh(MESH.value, "--mesh"),
      [p.encode() for p in prompts], max_new_tokens=MAX_NEW.value, seed=SEED.value,
      sampling=generation.Sampling(TEMPERATURE.value, TOP_K.value, TOP_P.value),
      context=generation.ContextRequest(read_file(CONTEXT_FILE), CONTEXT_STATE.value,
                                        SAVE_CONTEXT.value, CONTEXT_ROOM.value),
      tokenizer=TOKENIZER.value)
  if jax.process_index() == 0:
    for prompt, text in zip(prompts, out.texts):
      print(f"--- {prompt!r}\n{prompt}{text.decode(errors='replace')}")
    logging.info("%s step %d: %.1f tokens/s (batch %d; compile %.1f s)", config.model.name,
                 step, out.tokens_per_second, len(prompts), out.compile_seconds)


if __name__ == "__main__":
  cli.run(main)
