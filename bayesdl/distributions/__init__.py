"""Conditional distributions p(y | x) as modules: mixture density networks and normalizing flows."""

from bayesdl.distributions.flows import (
    CONDITIONAL_FAMILIES,
    FAMILIES,
    ConditionalFlow,
    Flow,
    umnn_available,
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
    "umnn_available",
]
