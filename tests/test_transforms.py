"""Tests of the UMNN transforms in :mod:`bayesdl.distributions.transforms`."""

from __future__ import annotations

import io
import math

import pyro.distributions as dist
import pytest
import torch

from bayesdl.data import log_density_2d, sample_2d
from bayesdl.distributions.transforms import UMNN, ConditionalUMNN, quadrature_rule
from tests.common import assert_close

TOL = 1e-5  # the default root-finding tolerance of UMNN


def small_umnn(dim: int = 3, **kwargs) -> UMNN:
    torch.manual_seed(0)
    return UMNN(dim, hidden=(16, 16), embedding_dim=4, integrand_hidden=(16,), **kwargs)


def standard_flow(transform, dim: int = 2) -> dist.TransformedDistribution:
    return dist.TransformedDistribution(dist.Normal(torch.zeros(dim), 1.0).to_event(1), [transform])


# --- quadrature -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["clenshaw-curtis", "gauss-legendre"])
def test_quadrature_rule_is_exact_for_polynomials_and_accurate_for_exp(rule):
    n = 12
    nodes, weights = quadrature_rule(n, rule)
    assert nodes.shape == weights.shape == (n,)
    assert bool((weights > 0).all())
    degree = n - 1 if rule == "clenshaw-curtis" else 2 * n - 1
    for k in range(degree + 1):
        exact = 2 / (k + 1) if k % 2 == 0 else 0.0
        assert_close((weights * nodes**k).sum(), exact, atol=1e-13, rtol=0)
    # exp on [-1, 1]: e - 1/e to 1e-12 with 12 nodes
    assert_close((weights * nodes.exp()).sum(), math.e - 1 / math.e, atol=1e-12, rtol=0)


class _Fixed(torch.nn.Module):
    """Stands in for the integrand network: ``g([t, h]) = sign * t^2``."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, th: torch.Tensor) -> torch.Tensor:
        return self.sign * th[..., :1] ** 2


@pytest.mark.parametrize("quadrature", ["clenshaw-curtis", "gauss-legendre"])
def test_umnn_integral_of_known_integrand_matches_closed_form(quadrature):
    """With ``g = t^2`` and ``beta = 0``, ``f = t^2 + 1 + eps`` (a polynomial, integrated exactly);
    with ``g = -t^2``, ``f = exp(-t^2) + eps`` and ``F = sqrt(pi) / 2 erf(x) + eps x``."""
    eps = 1e-3
    umnn = UMNN(1, hidden=(8,), embedding_dim=2, quadrature=quadrature, min_derivative=eps)
    umnn = umnn.double()
    with torch.no_grad():
        for p in umnn.conditioner.parameters():
            p.zero_()  # beta = 0
    x = torch.linspace(-3, 3, 61, dtype=torch.float64).unsqueeze(-1)
    t = x.squeeze(-1)
    umnn.integrand.net = _Fixed(1.0)
    y = umnn(x).squeeze(-1)
    assert_close(y, t**3 / 3 + (1 + eps) * t, atol=1e-12, rtol=0)
    assert_close(umnn.log_abs_det_jacobian(x, y), (t**2 + 1 + eps).log(), atol=1e-12, rtol=0)
    umnn.integrand.net = _Fixed(-1.0)
    y = umnn(x.clone()).squeeze(-1)  # a new tensor: the cache keys on identity
    exact = math.sqrt(math.pi) / 2 * torch.erf(t) + eps * t
    # 20 nodes on [0, 3]: a smooth integrand converges fast, measured error < 1e-9
    assert_close(y, exact, atol=1e-8, rtol=0)


def test_integral_converges_with_number_of_nodes():
    torch.manual_seed(0)
    ref = UMNN(2, hidden=(8,), embedding_dim=3, integrand_hidden=(8,), num_quadrature=200).double()
    coarse = UMNN(2, hidden=(8,), embedding_dim=3, integrand_hidden=(8,), num_quadrature=40)
    coarse = coarse.double()
    coarse.load_state_dict(ref.state_dict())
    x = 2 * torch.randn(100, 2, dtype=torch.float64)
    assert_close(coarse(x), ref(x), atol=2e-6, rtol=0)  # measured 3.7e-7 (20 nodes: 3.8e-6)


# --- the transform's contract -------------------------------------------------------------------


def test_forward_is_monotonic_in_each_dimension():
    umnn = small_umnn(3)
    base = torch.randn(50, 3)
    grid = torch.linspace(-6, 6, 200)
    with torch.no_grad():
        for i in range(3):
            x = base.unsqueeze(1).repeat(1, 200, 1)
            x[..., i] = grid
            y = umnn(x)[..., i]
            assert bool((y[:, 1:] > y[:, :-1]).all()), f"dimension {i} is not increasing"


@pytest.mark.parametrize("quadrature", ["clenshaw-curtis", "gauss-legendre"])
def test_inverse_of_forward_within_root_finding_tolerance(quadrature):
    umnn = small_umnn(3, quadrature=quadrature)
    x = 3 * torch.randn(500, 3)
    with torch.no_grad():
        y = umnn(x)
        umnn._cached_x_y = None, None  # force the root finder, not the cache
        x_back = umnn.inv(y)
    assert umnn.last_iterations > 0
    assert_close(x_back, x, atol=TOL, rtol=0)
    # the test can fail: two iterations per dimension are not enough
    rough = small_umnn(3, quadrature=quadrature, max_iter=2)
    with torch.no_grad():
        assert float((rough.inv(y.clone()) - x).abs().max()) > 10 * TOL
    # a far-away target needs the bracket to expand
    with torch.no_grad():
        y_far = torch.full((4, 3), 40.0)
        assert_close(umnn(umnn.inv(y_far)), y_far, atol=1e-4, rtol=0)


def test_log_abs_det_jacobian_matches_autograd():
    umnn = small_umnn(3).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    for xi in x:
        jac = torch.autograd.functional.jacobian(umnn._call, xi)
        assert_close(jac.triu(1), torch.zeros(3, 3), atol=1e-12)  # autoregressive: lower-triangular
        expected = torch.linalg.slogdet(jac)[1]
        actual = umnn.log_abs_det_jacobian(xi, umnn._call(xi))
        assert_close(actual, expected, atol=1e-3, rtol=0)


def test_gradients_reach_every_parameter_both_directions():
    umnn = small_umnn(2)
    x = torch.randn(32, 2)
    for transform in (umnn.inv, umnn):  # log_prob by quadrature, then by root finding
        umnn.zero_grad()
        standard_flow(transform).log_prob(x).mean().backward()
        for name, p in umnn.named_parameters():
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_implicit_gradient_of_inverse_matches_finite_differences():
    umnn = small_umnn(2).double()
    y = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    x = umnn._inverse(y)
    (grad,) = torch.autograd.grad(x.sum(), y)
    eps = 1e-6
    fd = torch.zeros_like(grad)
    with torch.no_grad():
        for j in range(2):
            shift = torch.zeros_like(y)
            shift[:, j] = eps
            fd[:, j] = (umnn._inverse(y + shift).sum(-1) - umnn._inverse(y - shift).sum(-1)) / (
                2 * eps
            )
    assert_close(grad, fd, atol=1e-4, rtol=0)


@pytest.mark.parametrize("direction", ["inv", "forward"])
def test_transformed_distribution_shapes(direction):
    umnn = small_umnn(2)
    flow = standard_flow(umnn.inv if direction == "inv" else umnn)
    assert flow.sample().shape == (2,)
    assert flow.sample((7,)).shape == (7, 2)
    assert flow.sample((3, 4)).shape == (3, 4, 2)
    assert flow.log_prob(torch.randn(5, 2)).shape == (5,)
    assert flow.log_prob(torch.randn(3, 5, 2)).shape == (3, 5)
    assert torch.isfinite(flow.log_prob(flow.sample((10,)))).all()


def test_log_prob_through_both_directions_agrees():
    umnn = small_umnn(2)
    z = torch.randn(20, 2)
    with torch.no_grad():
        x = umnn(z)
        umnn._cached_x_y = None, None
        # density of x under flow(umnn) equals that of z under flow(umnn.inv) with the Jacobian
        lp_forward = standard_flow(umnn).log_prob(x)
        lp_inv = standard_flow(umnn.inv).log_prob(z)
        ladj = umnn.log_abs_det_jacobian(z, x)
    assert_close(lp_forward, dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - ladj, atol=1e-4)
    assert_close(lp_inv, dist.Normal(0.0, 1.0).log_prob(x).sum(-1) + ladj, atol=1e-4)


def test_save_load_gives_identical_log_prob():
    umnn = small_umnn(2)
    x = torch.randn(10, 2)
    buffer = io.BytesIO()
    torch.save(umnn.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    other = UMNN(2, hidden=(16, 16), embedding_dim=4, integrand_hidden=(16,))
    with torch.no_grad():
        assert not torch.allclose(
            standard_flow(other.inv).log_prob(x), standard_flow(umnn.inv).log_prob(x)
        )
        other.load_state_dict(torch.load(buffer))
        assert torch.equal(
            standard_flow(other.inv).log_prob(x), standard_flow(umnn.inv).log_prob(x)
        )


def test_cache_is_dropped_after_optimiser_step():
    """Pyro's cache keys on tensor identity; after an in-place parameter update the same data
    tensor must not get the stale result."""
    umnn = small_umnn(2)
    flow = standard_flow(umnn.inv)
    x = torch.randn(16, 2)
    opt = torch.optim.Adam(umnn.parameters(), lr=0.1)
    loss = -flow.log_prob(x).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = flow.log_prob(x)
    umnn._cached_x_y = None, None
    fresh = flow.log_prob(x)
    assert_close(after, fresh, atol=1e-6)
    assert not torch.allclose(after, -loss.detach().expand(16), atol=1e-3)
    # the cache still serves sample -> log_prob without a root find (forward direction: the
    # log-density of a sample would otherwise need the inverse)
    with torch.no_grad():
        s = standard_flow(umnn).sample((8,))
        flow = standard_flow(umnn)
        umnn.last_iterations = 0
        flow.log_prob(s)
    assert umnn.last_iterations == 0


def test_maximum_likelihood_fit_on_8gaussians():
    torch.manual_seed(0)
    train = sample_2d("8gaussians", 2000, seed=0)
    test = sample_2d("8gaussians", 2000, seed=1)
    entropy = float(-log_density_2d("8gaussians", test).mean())  # about 1.71 nats
    umnn = UMNN(2, hidden=(64, 64))
    flow = standard_flow(umnn.inv)
    with torch.no_grad():
        before = float(-flow.log_prob(test).mean())
    opt = torch.optim.Adam(umnn.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = train[torch.randint(0, 2000, (256,), generator=gen)]
        loss = -flow.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(-flow.log_prob(test).mean())
    # measured: 4.54 -> 2.18 nats after 300 steps (true entropy 1.71)
    assert before > 4.0
    assert after < 2.4, (before, after, entropy)
    assert after > entropy - 0.05  # a held-out NLL below the entropy would signal a bug


# --- the conditional variant --------------------------------------------------------------------


def test_conditional_umnn_conditions_on_context():
    torch.manual_seed(0)
    cond = ConditionalUMNN(2, context_dim=3, hidden=(16,), embedding_dim=4, integrand_hidden=(16,))
    y = torch.randn(5, 2)
    c1, c2 = torch.randn(5, 3), torch.randn(5, 3)
    t1, t2 = cond.condition(c1), cond.condition(c2)
    out1, out2 = t1(y), t2(y)
    assert out1.shape == (5, 2)
    assert not torch.allclose(out1, out2, atol=1e-4)
    assert_close(cond.condition(c1)(y), out1)  # deterministic given the context
    with torch.no_grad():
        t1._cached_x_y = None, None
        assert_close(t1.inv(out1), y, atol=TOL, rtol=0)
    # a conditional distribution p(y | x) with log_prob and sample of the right shapes
    d = dist.ConditionalTransformedDistribution(
        dist.Normal(torch.zeros(2), 1.0).to_event(1), [cond.inv]
    )
    assert d.condition(c1).log_prob(y).shape == (5,)
    assert d.condition(c1).sample((5,)).shape == (5, 2)  # one draw per context row
    assert d.condition(torch.randn(3)).sample((4,)).shape == (4, 2)
    loss = -d.condition(c1).log_prob(y).mean()
    loss.backward()
    for name, p in cond.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_conditional_log_det_matches_autograd():
    torch.manual_seed(0)
    cond = ConditionalUMNN(3, context_dim=2, hidden=(16,), embedding_dim=4).double()
    t = cond.condition(torch.randn(2, dtype=torch.float64))
    y = torch.randn(3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(t._call, y)
    assert_close(t.log_abs_det_jacobian(y, t._call(y)), torch.linalg.slogdet(jac)[1], atol=1e-3)


# --- bad arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dim": 0}, ValueError, "dim"),
        ({"dim": 2.0}, TypeError, "dim"),
        ({"dim": 2, "hidden": "64"}, TypeError, "hidden"),
        ({"dim": 2, "hidden": (0,)}, ValueError, "hidden"),
        ({"dim": 2, "integrand_hidden": ()}, ValueError, "integrand_hidden"),
        ({"dim": 2, "num_quadrature": 1}, ValueError, "num_quadrature"),
        ({"dim": 2, "quadrature": "simpson"}, ValueError, "quadrature"),
        ({"dim": 2, "tol": 0.0}, ValueError, "tol"),
        ({"dim": 2, "max_iter": 0}, ValueError, "max_iter"),
        ({"dim": 2, "min_derivative": -1.0}, ValueError, "min_derivative"),
        ({"dim": 2, "embedding_dim": 0}, ValueError, "embedding_dim"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        UMNN(**kwargs)


def test_bad_conditional_arguments_raise():
    with pytest.raises(ValueError, match="context_dim"):
        ConditionalUMNN(2, context_dim=0)
    cond = ConditionalUMNN(2, context_dim=3, hidden=(8,))
    with pytest.raises(ValueError, match="context"):
        cond.condition(torch.zeros(5, 2))
    with pytest.raises(TypeError, match="context"):
        cond.condition([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="rule"):
        quadrature_rule(5, "trapezoid")
    with pytest.raises(ValueError, match="num_nodes"):
        quadrature_rule(1)
