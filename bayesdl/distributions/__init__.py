"""Conditional distributions p(y | x) as modules: mixture density networks (and flows)."""

from bayesdl.distributions.mdn import MixtureDensityNetwork, find_modes, gaussian_mixture_crps

__all__ = ["MixtureDensityNetwork", "find_modes", "gaussian_mixture_crps"]
