"""Per-token hyperparameters for inner-loop rules: optax rules driven by a memory's gates.

A memory's in-context update has data-dependent hyperparameters, one value per token (Titans'
theta_t, eta_t, alpha_t; HOPE's eta_t, alpha_t). A memory that runs an optax rule passes them
to every `update` call as extra arguments (`learning_rate=`, `momentum=`, `decay=`), and
`gate(name)` is a stateful optax schedule that reads one of them, so any optax transformation
takes a gate as a hyperparameter through `optax.inject_hyperparams`:

  optax.inject_hyperparams(optax.trace)(decay=gate("momentum"))

`titans_rule()` writes Titans' own update (eqs. 9-10, 13-14) this way, as a chain of optax
transformations:

  u   = -theta_t g                       optax.scale(step_size=-theta_t)
  S_t = eta_t S_{t-1} + u                optax.trace(decay=eta_t)
  M_t = M_{t-1} + S_t - alpha_t M_{t-1}  optax.add_decayed_weights(weight_decay=-alpha_t)
"""
import jax.numpy as jnp
import optax

GATES = ("learning_rate", "momentum", "decay")


class gate:  # noqa: N801 - used like the optax schedule constructors
  """A stateful optax schedule whose value is the extra argument `name` times `scale`.

  Outside a memory (no such extra argument, e.g. at init) it is `default`.
  """

  def __init__(self, name: str, scale: float = 1.0, default: float = 0.0):
    if name not in GATES:
      raise ValueError(f"gate name must be one of {GATES}, got {name!r}")
    self.name, self.scale, self.default = name, scale, default

  def init(self):
    return ()

  def update(self, state, **extra_args):
    del extra_args
    return state

  def __call__(self, state, **extra_args):
    del state
    return self.scale * jnp.asarray(extra_args.get(self.name, self.default))


def titans_rule() -> optax.GradientTransformationExtraArgs:
  """Titans' momentum-and-forgetting update (eqs. 9-10, 13-14) as an optax chain of gated rules."""
  return optax.chain(
      optax.inject_hyperparams(optax.scale)(step_size=gate("learning_rate", -1.0)),
      optax.inject_hyperparams(optax.trace)(decay=gate("momentum")),
      optax.inject_hyperparams(optax.add_decayed_weights)(weight_decay=gate("decay", -1.0)))
