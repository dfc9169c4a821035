"""Conditional distributions p(y | x) as modules: mixture density networks and normalizing flows."""

from bayesdl.distributions.flows import (
    CONDITIONAL_FAMILIES,
    FAMILIES,
    ConditionalFlow,
    Flow,
)
from bayesdl.distributions.mdn import MixtureDensityNetwork, find_modes, gaussian_mixture_crps
from bayesdl.distributions.transforms import UMNN, ConditionalUMNN

__all__ = [
    "CONDITIONAL_FAMILIES",
    "FAMILIES",
    "UMNN",
    "ConditionalFlow",
    "ConditionalUMNN",
    "Flow",
    "MixtureDensityNetwork",
    "find_modes",
    "gaussian_mixture_crps",
]
