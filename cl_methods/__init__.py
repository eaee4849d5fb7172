"""Continual learning: scenarios, streams, benchmark data, metrics and six method families.

Imports nothing else of this project; every method is a bundle of pure functions over a
params pytree that works with any `apply_fn(params, x) -> logits` and any optax rule.

  datasets, mnist1d        labelled data (sklearn digits, MNIST-1D, Fashion-MNIST package,
                           idx / CIFAR / npz files, arrays); nothing is downloaded
  streams                  split / permuted / rotated contexts; task-based, interleaved and
                           task-free (gradual boundary) streams as grain MapDatasets
  scenarios                Task-IL / Domain-IL / Class-IL output layouts (masked logits,
                           separate heads)
  batch                    the Batch a method sees, gathered on device
  method, train_step       the method interface and one optax step
  baselines                finetune, joint
  replay_buffer, replay    reservoir buffer; ER, DER++
  regularization           EWC, online EWC, SI, MAS
  functional_regularization  LwF
  gradient_projection      A-GEM
  context_specific         separate heads, XdG, PackNet
  template_classifiers     iCaRL (herding, nearest mean), generative classifier
  metrics                  ACC, BWT, FWT, forgetting, learning accuracy, min-ACC
  runner, registry         run a method on a stream; all methods by name
  benchmark_models, plots  small NNX networks in functional form; PNG plots
"""
