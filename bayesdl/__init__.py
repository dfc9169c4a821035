"""bayesdl: uncertainty in deep learning with Pyro.

Aleatoric uncertainty (homoscedastic and heteroscedastic regression, mixture density networks,
normalizing flows), epistemic uncertainty (Bayesian neural networks fitted by SVI and HMC, one
predictive that splits the two), infinitely wide networks and adversarial examples.
"""

__version__ = "0.1.0"

from bayesdl import data, nn
from bayesdl.inference import fit

__all__ = ["__version__", "data", "fit", "nn"]
