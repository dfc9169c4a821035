"""Variational families q(w) for Bayesian neural networks."""

from bayesdl.guides.dropout import FAMILIES, DropoutGuide, dropped_weights
from bayesdl.guides.meanfield import MeanFieldNormal, init_from_network, low_rank

__all__ = [
    "FAMILIES",
    "DropoutGuide",
    "MeanFieldNormal",
    "dropped_weights",
    "init_from_network",
    "low_rank",
]
