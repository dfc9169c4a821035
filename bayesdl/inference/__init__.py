"""Inference: SVI training, MCMC sampling and one predictive for every posterior."""

from bayesdl.inference.elbo import JitTraceMeanField_ELBO
from bayesdl.inference.mcmc import FlatPotential, MCMCResult, potential_energy, run_mcmc
from bayesdl.inference.predictive import Posterior, Prediction, posterior_samples, predict
from bayesdl.inference.svi import History, TrainingDivergedError, fit, scale_data_plate

__all__ = [
    "FlatPotential",
    "History",
    "JitTraceMeanField_ELBO",
    "MCMCResult",
    "Posterior",
    "Prediction",
    "TrainingDivergedError",
    "fit",
    "posterior_samples",
    "potential_energy",
    "predict",
    "run_mcmc",
    "scale_data_plate",
]
