"""Variational families q(w) for Bayesian neural networks."""

from bayesdl.guides.meanfield import MeanFieldNormal, init_from_network, low_rank

__all__ = ["MeanFieldNormal", "init_from_network", "low_rank"]
