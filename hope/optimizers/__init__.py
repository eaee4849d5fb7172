"""Nested optimizers: optax update rules from Nested Learning's optimizers-as-memories view.

Every rule is an `optax.GradientTransformation` on plain parameter pytrees, so it serves as
an outer optimizer (alone, in optax.chain/partition/MultiSteps, or per CMS level through
`multi_frequency`) and as the inner rule of a memory (`hope.neural_memory`, with the per-token
gates of `gates`).
"""
from hope.optimizers.deep_momentum import deep_momentum
from hope.optimizers.delta_gradient_descent import delta_gradient_descent
from hope.optimizers.gates import gate, titans_rule
from hope.optimizers.m3 import m3
from hope.optimizers.momentum import default_preconditioner, delta_momentum, preconditioned_momentum
from hope.optimizers.multi_frequency import multi_frequency
from hope.optimizers.newton_schulz import muon, newton_schulz, orthogonalize

__all__ = ["deep_momentum", "default_preconditioner", "delta_gradient_descent", "delta_momentum",
           "gate", "m3", "multi_frequency", "muon", "newton_schulz", "orthogonalize",
           "preconditioned_momentum", "titans_rule"]
