"""All methods by name, with what each needs, so a front end can validate before training.

`ENTRIES[name]` says the family, the scenarios the method cannot serve and why, whether it
needs signalled context boundaries, whether it uses separate heads, and the names of its
hyperparameters; `build` turns a name, a model in functional form, a scenario layout and a
dict of hyperparameters into a `ContinualMethod`.
"""
import dataclasses
from typing import Callable

from cl_methods import baselines
from cl_methods import context_specific
from cl_methods import functional_regularization
from cl_methods import gradient_projection
from cl_methods import regularization
from cl_methods import replay
from cl_methods import template_classifiers


@dataclasses.dataclass(frozen=True)
class MethodEntry:
  name: str
  family: str
  factory: Callable        # (model, layout, hparams, steps_per_context, seed) -> method
  hparams: tuple = ()
  unsupported: dict = dataclasses.field(default_factory=dict)
  needs_boundaries: str = ""
  separate_heads: bool = False
  interleaved: bool = False

  def serves(self, scenario: str) -> bool:
    return scenario not in self.unsupported


def _n_contexts(layout):
  return layout.train_mask.shape[0]


# Builders: (model, layout, hparams, steps_per_context, seed) -> ContinualMethod.

def _finetune(m, layout, hp, steps, seed):
  return baselines.finetune(m.apply_fn)


def _joint(m, layout, hp, steps, seed):
  return baselines.joint(m.apply_fn)


def _er(m, layout, hp, steps, seed):
  return replay.experience_replay(m.apply_fn, buffer_size=hp["buffer_size"])


def _derpp(m, layout, hp, steps, seed):
  return replay.dark_experience_replay(m.apply_fn, buffer_size=hp["buffer_size"],
                                       alpha=hp["alpha"], beta=hp["beta"])


def _ewc(m, layout, hp, steps, seed):
  return regularization.ewc(m.apply_fn, strength=hp["strength"],
                            fisher=hp["fisher"])


def _online_ewc(m, layout, hp, steps, seed):
  return regularization.online_ewc(m.apply_fn, strength=hp["strength"], gamma=hp["gamma"],
                                   fisher=hp["fisher"])


def _si(m, layout, hp, steps, seed):
  return regularization.synaptic_intelligence(m.apply_fn, strength=hp["strength"],
                                              damping=hp["damping"])


def _mas(m, layout, hp, steps, seed):
  return regularization.memory_aware_synapses(m.apply_fn, strength=hp["strength"])


def _lwf(m, layout, hp, steps, seed):
  return functional_regularization.learning_without_forgetting(
      m.apply_fn, temperature=hp["temperature"], context_masks=layout.train_mask)


def _agem(m, layout, hp, steps, seed):
  return gradient_projection.agem(m.apply_fn, buffer_size=hp["buffer_size"], eps=hp["eps"])


def _xdg(m, layout, hp, steps, seed):
  return context_specific.context_gating(
      m.apply_fn, gated_layers=m.gated_layers, n_contexts=_n_contexts(layout),
      gate_fraction=hp["gate_fraction"], seed=seed)


def _separate_heads(m, layout, hp, steps, seed):
  return context_specific.separate_heads(m.apply_fn)


def _packnet(m, layout, hp, steps, seed):
  return context_specific.packnet(
      m.apply_fn, n_contexts=_n_contexts(layout), prune_fraction=hp["prune_fraction"],
      prune_step=max(1, round(steps * (1.0 - hp["retrain_fraction"]))))


def _icarl(m, layout, hp, steps, seed):
  return template_classifiers.icarl(m.apply_fn, m.features_fn,
                                    exemplars_per_class=hp["exemplars_per_class"],
                                    context_units=layout.context_units)


def _generative_classifier(m, layout, hp, steps, seed):
  return template_classifiers.generative_classifier(
      hidden=hp["hidden"], latent=hp["latent"], importance_samples=hp["importance_samples"],
      decoder_std=hp["decoder_std"])


_TASK_IL_ONLY = context_specific.task_il_only
_REG = "parameter regularization"
_ENTRY_LIST = [
    MethodEntry("finetune", "baseline", _finetune),
    MethodEntry("joint", "baseline", _joint, interleaved=True),
    MethodEntry("er", "replay", _er, hparams=("buffer_size",)),
    MethodEntry("derpp", "replay", _derpp, hparams=("buffer_size", "alpha", "beta")),
    MethodEntry("ewc", _REG, _ewc, hparams=("strength", "fisher"),
                needs_boundaries=regularization.BOUNDARY_REASON),
    MethodEntry("online_ewc", _REG, _online_ewc, hparams=("strength", "gamma", "fisher"),
                needs_boundaries=regularization.BOUNDARY_REASON),
    MethodEntry("si", _REG, _si, hparams=("strength", "damping"),
                needs_boundaries=regularization.BOUNDARY_REASON),
    MethodEntry("mas", _REG, _mas, hparams=("strength",),
                needs_boundaries=regularization.BOUNDARY_REASON),
    MethodEntry("lwf", "functional regularization", _lwf, hparams=("temperature",),
                needs_boundaries=functional_regularization.BOUNDARY_REASON),
    MethodEntry("agem", "optimization-based", _agem, hparams=("buffer_size", "eps")),
    MethodEntry("xdg", "context-specific", _xdg, hparams=("gate_fraction",),
                unsupported=_TASK_IL_ONLY(context_specific.GATES)),
    MethodEntry("separate_heads", "context-specific", _separate_heads,
                unsupported=_TASK_IL_ONLY(context_specific.HEADS), separate_heads=True),
    MethodEntry("packnet", "context-specific", _packnet,
                hparams=("prune_fraction", "retrain_fraction"),
                unsupported=_TASK_IL_ONLY(context_specific.WEIGHTS),
                needs_boundaries=context_specific.PACKNET_BOUNDARY_REASON),
    MethodEntry("icarl", "template-based", _icarl, hparams=("exemplars_per_class",),
                unsupported={"domain": template_classifiers.DOMAIN_REASON},
                needs_boundaries=template_classifiers.ICARL_BOUNDARY_REASON),
    MethodEntry("generative_classifier", "template-based", _generative_classifier,
                hparams=("hidden", "latent", "importance_samples", "decoder_std"),
                unsupported={"domain": template_classifiers.DOMAIN_REASON}),
]

ENTRIES = {e.name: e for e in _ENTRY_LIST}
METHOD_NAMES = tuple(ENTRIES)


def build(name: str, model, layout, hparams: dict, *, steps_per_context: int, seed: int = 0):
  """Builds method `name` for a model (benchmark_models.FunctionalModel) and layout."""
  if name not in ENTRIES:
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
  entry = ENTRIES[name]
  missing = [h for h in entry.hparams if h not in hparams]
  if missing:
    raise ValueError(f"{name}: missing hyperparameters {missing}")
  return entry.factory(model, layout, hparams, steps_per_context, seed)
