"""Small Flax NNX networks for the benchmarks, and their functional form.

The methods never see a module: they get `apply_fn(params, x) -> logits` (and
`features_fn(params, x)` for methods that need an embedding) over a plain dict of arrays,
obtained once with `nnx.split` + `nnx.to_pure_dict` and rebuilt inside jit with
`nnx.merge`. Any other Flax (or plain JAX) model with that signature works the same way.

* MLP: flatten, `hidden` fully connected ReLU layers, a linear head (van de Ven et al.'s
  split-MNIST network is MLP(400, 400)).
* ConvNet: 3x3 convolutions with ReLU and 2x2 average pooling, then fully connected ReLU
  layers and a linear head, for image inputs.

`gated_layers` lists the parameter paths of the hidden layers (whose last axis is their
units), used by XdG.
"""
import functools
import math
from typing import Callable, NamedTuple, Sequence

import jax
from flax import nnx


class MLP(nnx.Module):
  """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear head."""

  def __init__(self, in_features: int, hidden: Sequence[int], n_outputs: int, *,
               rngs: nnx.Rngs):
    sizes = [in_features, *hidden]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], n_outputs, rngs=rngs)

  def features(self, x):
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = jax.nn.relu(layer(x))
    return x

  def __call__(self, x):
    return self.head(self.features(x))

  def gated_layers(self):
    return [("hidden", i) for i in range(len(self.hidden))]


class ConvNet(MLP):
  """[Conv3x3 -> ReLU -> AvgPool2x2] * len(channels) -> MLP body -> Linear head."""

  def __init__(self, input_shape: Sequence[int], channels: Sequence[int],
               hidden: Sequence[int], n_outputs: int, *, rngs: nnx.Rngs):
    h, w, c = input_shape
    chans = [c, *channels]
    self.conv = nnx.List([nnx.Conv(a, b, kernel_size=(3, 3), rngs=rngs)
                          for a, b in zip(chans[:-1], chans[1:])])
    for _ in channels:
      h, w = max(h // 2, 1), max(w // 2, 1)
    super().__init__(h * w * chans[-1], hidden, n_outputs, rngs=rngs)

  def features(self, x):
    for layer in self.conv:
      x = jax.nn.relu(layer(x))
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    return super().features(x)

  def gated_layers(self):
    return [("conv", i) for i in range(len(self.conv))] + super().gated_layers()


class FunctionalModel(NamedTuple):
  apply_fn: Callable        # (params, x) -> logits
  features_fn: Callable     # (params, x) -> last hidden features
  params: dict              # plain nested dict of arrays
  gated_layers: list        # parameter paths of the hidden layers


def functional(model: nnx.Module) -> FunctionalModel:
  """Splits an NNX module with `features` into pure functions over a params dict."""
  graphdef, state = nnx.split(model)

  def apply_fn(params, x):
    return nnx.merge(graphdef, params)(x)

  def features_fn(params, x):
    return nnx.merge(graphdef, params).features(x)

  return FunctionalModel(apply_fn, features_fn, nnx.to_pure_dict(state), model.gated_layers())


MODEL_KINDS = ("mlp", "conv")


def _module(kind, input_shape, n_outputs, hidden, conv_channels, seed):
  rngs = nnx.Rngs(seed)
  if kind == "mlp":
    return MLP(math.prod(input_shape), hidden, n_outputs, rngs=rngs)
  return ConvNet(input_shape, conv_channels, hidden, n_outputs, rngs=rngs)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _initial_params(kind, input_shape, n_outputs, hidden, conv_channels, seed):
  """Initial parameters, compiled once per architecture and seed (runs of a grid share it)."""
  return nnx.to_pure_dict(nnx.split(_module(kind, input_shape, n_outputs, hidden,
                                            conv_channels, seed))[1])


def build(kind: str, input_shape: Sequence[int], n_outputs: int, *, hidden: Sequence[int],
          conv_channels: Sequence[int] = (), seed: int = 0) -> FunctionalModel:
  """Builds a benchmark network and returns its functional form."""
  if kind not in MODEL_KINDS:
    raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(MODEL_KINDS)}")
  if kind == "conv" and len(input_shape) != 3:
    raise ValueError(f"conv needs image inputs (height, width, channels), got {input_shape}")
  args = (kind, tuple(input_shape), int(n_outputs), tuple(hidden), tuple(conv_channels),
          int(seed))
  abstract = functional(nnx.eval_shape(lambda: _module(*args)))
  return abstract._replace(params=_initial_params(*args))
