"""Inference: SVI training, MCMC sampling and one predictive for every posterior."""

from bayesdl.inference.svi import History, TrainingDivergedError, fit, scale_data_plate

__all__ = ["History", "TrainingDivergedError", "fit", "scale_data_plate"]
