"""Evaluates a checkpoint of a pretraining run on the validation split.

  python -m experiments.evaluate --workdir=DIR [--step=N] [--mesh=data:2,tensor:4] [--context=T]

Reads the run's config from the checkpoint, restores the parameters onto the evaluation mesh
(any shape: the checkpoint need not come from the same mesh), and scores the first
`config.eval_batches` validation batches in order. Writes DIR/eval/step_<N>.json with
`loss` (mean next-token cross-entropy, nats per token), `perplexity`, `bits_per_byte` (the
loss over the validation split's bytes per token: runs with different tokenizers compare),
`tokenizer`, `tokens`, and `loss_by_piece`.

`--context=T` (a multiple of the training seq_len) scores documents of T tokens read in
pieces of seq_len: models with in-context memories (Titans, HOPE, CMS) carry their state
from piece to piece (`DecoderLM.stream`), so `loss_by_piece` shows learning at test time;
attention-only models see each piece alone. The default is one piece (T = seq_len).
"""
from absl import flags

from experiments import cli
from runtime.evaluation import evaluate

WORKDIR = flags.DEFINE_string("workdir", None, "The pretraining run's workdir.")
STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
CONTEXT = flags.DEFINE_integer("context", None, "Document length in tokens, a multiple of the "
                               "training seq_len (default: seq_len).")
MESH = flags.DEFINE_string("mesh", "data:-1", "Evaluation mesh as axis:size pairs, e.g. "
                           "data:2,tensor:4; unnamed axes are 1 and -1 means the rest.")


def main(argv):
  cli.check_arguments(argv, workdir=WORKDIR)
  cli.initialize_distributed()
  evaluate(WORKDIR.value, STEP.value, cli.parse_mesh(MESH.value, "--mesh"), CONTEXT.value)


if __name__ == "__main__":
  cli.run(main)
