"""Variational families q(w) for Bayesian neural networks."""
