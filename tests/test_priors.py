"""Tests of :mod:`bayesdl.priors`: the distributions each prior puts on a parameter, by hand."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from bayesdl.priors import Prior, fan_in_normal, laplace, normal, resolve_prior
from tests.common import assert_close


def _normal_logpdf(value: torch.Tensor, scale: float) -> torch.Tensor:
    return (-0.5 * (value / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)).sum()


def _laplace_logpdf(value: torch.Tensor, scale: float) -> torch.Tensor:
    return (-value.abs() / scale - math.log(2 * scale)).sum()


PARAMS = {
    "bias": torch.zeros(5),
    "linear": torch.zeros(5, 3),
    "conv": torch.zeros(4, 2, 3, 3),  # fan_in = 2 * 3 * 3 = 18
    "scalar": torch.zeros(()),
}


@pytest.mark.parametrize("kind", list(PARAMS))
def test_normal_prior_event_shape_and_density(kind):
    param = PARAMS[kind]
    d = normal(0.7)("w", param)
    assert d.batch_shape == ()
    assert d.event_shape == param.shape
    value = torch.randn(param.shape, generator=torch.Generator().manual_seed(1))
    assert_close(d.log_prob(value), _normal_logpdf(value, 0.7), atol=1e-5)
    assert_close(d.mean, torch.zeros(param.shape))
    assert_close(d.stddev, torch.full(param.shape, 0.7))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("bias", 2.0),  # 1-D parameters keep the scale
        ("linear", 2.0 / math.sqrt(3)),  # fan_in = in_features
        ("conv", 2.0 / math.sqrt(18)),  # fan_in = in_channels * kh * kw
        ("scalar", 2.0),
    ],
)
def test_fan_in_prior_scale(kind, expected):
    param = PARAMS[kind]
    prior = fan_in_normal(2.0)
    assert prior.scale_for(param) == pytest.approx(expected, rel=1e-12)
    d = prior("w", param)
    assert d.event_shape == param.shape
    assert_close(d.stddev, torch.full(param.shape, expected), rtol=1e-6)
    value = torch.randn(param.shape, generator=torch.Generator().manual_seed(2))
    assert_close(d.log_prob(value), _normal_logpdf(value, expected), atol=1e-4)


def test_fan_in_matches_torch_linear_fan_in():
    layer = nn.Linear(7, 4)
    d = fan_in_normal(1.0)("weight", layer.weight)
    assert_close(d.stddev, torch.full((4, 7), 1 / math.sqrt(7)), rtol=1e-6)
    # Without fan_in, the weight matrix keeps the scale too.
    assert normal(1.0).scale_for(layer.weight) == 1.0


@pytest.mark.parametrize("kind", ["bias", "linear", "conv"])
def test_laplace_prior_density(kind):
    param = PARAMS[kind]
    d = laplace(0.3)("w", param)
    assert d.event_shape == param.shape
    value = torch.randn(param.shape, generator=torch.Generator().manual_seed(3))
    assert_close(d.log_prob(value), _laplace_logpdf(value, 0.3), atol=1e-4)


def test_prior_follows_parameter_dtype():
    d = normal(1.0)("w", torch.zeros(2, 2, dtype=torch.float64))
    assert d.sample().dtype == torch.float64
    assert d.log_prob(torch.zeros(2, 2, dtype=torch.float64)).dtype == torch.float64


def test_resolve_prior_names():
    assert resolve_prior("normal").scale_for(PARAMS["linear"]) == 1.0
    assert resolve_prior("fan_in").scale_for(PARAMS["linear"]) == pytest.approx(1 / math.sqrt(3))
    assert resolve_prior("laplace").family == "laplace"
    custom = Prior("laplace", 0.5, fan_in=True)
    assert resolve_prior(custom) is custom


def test_resolve_prior_scalar_distribution_is_expanded():
    prior = resolve_prior(dist.StudentT(3.0, 0.0, 0.5))
    param = PARAMS["linear"]
    d = prior("w", param)
    assert d.batch_shape == ()
    assert d.event_shape == param.shape
    value = torch.randn(param.shape, generator=torch.Generator().manual_seed(4))
    assert_close(d.log_prob(value), dist.StudentT(3.0, 0.0, 0.5).log_prob(value).sum(), atol=1e-5)


def test_resolve_prior_callable_is_used_as_is():
    def prior(name, param):
        return dist.Normal(torch.ones_like(param), 1.0).to_event(param.ndim)

    assert resolve_prior(prior) is prior


def test_resolve_prior_rejects_bad_input():
    with pytest.raises(ValueError, match="prior"):
        resolve_prior("gaussian")
    with pytest.raises(TypeError, match="prior"):
        resolve_prior(1.0)
    with pytest.raises(ValueError, match="scalar"):
        resolve_prior(dist.Normal(torch.zeros(3), 1.0))
    with pytest.raises(ValueError, match="scalar"):
        resolve_prior(dist.Dirichlet(torch.ones(3)))


def test_prior_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        normal(0.0)
    with pytest.raises(ValueError, match="scale"):
        laplace(-1.0)
    with pytest.raises(TypeError, match="scale"):
        fan_in_normal("1")
    with pytest.raises(ValueError, match="family"):
        Prior("cauchy")


def test_prior_repr():
    assert repr(fan_in_normal(2.0)) == "Prior('normal', scale=2.0, fan_in=True)"
    assert "StudentT" in repr(resolve_prior(dist.StudentT(3.0)))
