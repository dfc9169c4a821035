"""Inference: SVI training, MCMC sampling and one predictive for every posterior."""

from bayesdl.inference.predictive import Posterior, Prediction, posterior_samples, predict
from bayesdl.inference.svi import History, TrainingDivergedError, fit, scale_data_plate

__all__ = [
    "History",
    "Posterior",
    "Prediction",
    "TrainingDivergedError",
    "fit",
    "posterior_samples",
    "predict",
    "scale_data_plate",
]
