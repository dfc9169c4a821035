r"""Functions drawn from the prior of a one-hidden-layer network, Neal's parameterisation.

``f(x) = b + sum_{j=1}^q v_j h_j(x)``, ``h_j(x) = act(a_j + sum_i u_ij x_i)``, with
``u_ij ~ N(0, sigma_u^2)``, ``a_j ~ N(0, sigma_a^2)``, ``v_j ~ N(0, omega_v^2 / q)`` and
``b ~ N(0, sigma_b^2)``. Every weight is drawn as standard normal noise times its scale, so two
calls with the same seed and width but different scales give *the same* networks rescaled, which
is how Neal's Figure 2.2 shows the effect of ``sigma_u``.

References:
    Neal, R. M. (1995). Bayesian learning for neural networks. PhD thesis, University of Toronto,
    chapter 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bayesdl._validation import check_choice, check_positive, check_tensor
from bayesdl.nn import ACTIVATIONS
from bayesdl.nn import activation as make_activation

__all__ = [
    "NealFigure",
    "hidden_moments",
    "neal_figure_2_2",
    "prior_variance",
    "sample_prior_functions",
]

# Elements of one (functions, inputs, units) block of hidden activations: bounds the memory of
# sample_prior_functions (2^23 float32 = 32 MiB) whatever the width.
_BLOCK = 2**23


def _activation(activation: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    if isinstance(activation, str):
        check_choice("activation", activation, ACTIVATIONS)
        return make_activation(activation)
    if callable(activation):
        return activation
    raise TypeError(
        f"activation must be a name in {list(ACTIVATIONS)} or a callable, "
        f"got {type(activation).__name__}"
    )


def _inputs(x: object) -> Tensor:
    x = check_tensor("x", x, ndim=(1, 2))
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    return x.unsqueeze(-1) if x.ndim == 1 else x


def _check_hyper(sigma_u: float, sigma_a: float, omega_v: float, sigma_b: float) -> None:
    for name, value in (
        ("sigma_u", sigma_u),
        ("sigma_a", sigma_a),
        ("omega_v", omega_v),
        ("sigma_b", sigma_b),
    ):
        check_positive(name, value, strict=False)


def sample_prior_functions(
    x: Tensor,
    num_functions: int = 1,
    width: int = 10_000,
    *,
    activation: str | Callable[[Tensor], Tensor] = "tanh",
    sigma_u: float = 1.0,
    sigma_a: float = 1.0,
    omega_v: float = 1.0,
    sigma_b: float = 1.0,
    seed: int = 0,
) -> Tensor:
    """Draw ``num_functions`` networks of ``width`` hidden units from the prior; evaluate at ``x``.

    The functions are computed a block at a time (several whole networks per block, or one
    network's units in blocks when it is wider than a block), so memory stays bounded (a few tens
    of MiB) at any width and number of functions.

    Arguments:
        x: Inputs, shape ``(N, p)`` or ``(N,)`` for one input feature.
        num_functions: Number of networks drawn.
        width: Number of hidden units ``q``.
        activation: A name in :data:`bayesdl.nn.ACTIVATIONS` or an elementwise callable.
        sigma_u: Standard deviation of the input-to-hidden weights.
        sigma_a: Standard deviation of the hidden biases.
        omega_v: Output scale: the hidden-to-output weights have standard deviation
            ``omega_v / sqrt(width)``.
        sigma_b: Standard deviation of the output bias.
        seed: Seed of the weights. The same seed gives the same standard-normal noise whatever
            the scales.

    Returns:
        The function values, shape ``(num_functions, N)``, in ``x``'s dtype.
    """
    x = _inputs(x)
    check_positive("num_functions", num_functions, integer=True)
    check_positive("width", width, integer=True)
    _check_hyper(sigma_u, sigma_a, omega_v, sigma_b)
    act = _activation(activation)
    n, p = x.shape
    gen = torch.Generator().manual_seed(int(seed))
    kw = {"generator": gen, "dtype": x.dtype}
    # The weights are small next to the activations (F x q x p against F x N x q): draw them all.
    u = torch.randn(num_functions, width, p, **kw).to(x.device) * sigma_u
    a = torch.randn(num_functions, width, **kw).to(x.device) * sigma_a
    v = torch.randn(num_functions, width, **kw).to(x.device) * (omega_v / math.sqrt(width))
    b = torch.randn(num_functions, **kw).to(x.device) * sigma_b
    f = b[:, None].expand(num_functions, n).clone()
    # Blocks of whole functions (all units at once) measured fastest; a single function wider
    # than a block is summed over blocks of units instead (make bench: prior_sampling).
    units = min(width, max(1, _BLOCK // n))
    functions = max(1, _BLOCK // (n * units))
    with torch.no_grad():
        for i in range(0, num_functions, functions):
            rows = slice(i, i + functions)
            x_rows = x.expand(f[rows].shape[0], n, p)
            for j in range(0, width, units):
                cols = slice(j, j + units)
                z = torch.baddbmm(a[rows, None, cols], x_rows, u[rows, cols].transpose(1, 2))
                f[rows] += torch.bmm(act(z), v[rows, cols, None]).squeeze(-1)
    return f


def hidden_moments(
    activation: str,
    variance: Tensor | float,
    num_nodes: int = 2**14 + 1,
) -> tuple[Tensor, Tensor]:
    """``E[h(z)^2]`` and ``E[h(z)^4]`` for ``z ~ N(0, variance)``: the lecture's ``V(x)`` and the
    moment the excess kurtosis of the finite network needs.

    Closed forms for ``step`` (1/2, 1/2) and ``relu`` (``s/2``, ``3 s^2 / 2``); the trapezoid rule
    on ``num_nodes`` points of ``[-12, 12]`` standard deviations otherwise (relative error below
    1e-9 for tanh and erf up to ``variance = 100`` and below 1e-6 up to ``variance = 1e4``).
    """
    check_choice("activation", activation, ACTIVATIONS)
    check_positive("num_nodes", num_nodes, integer=True)
    s = torch.as_tensor(variance, dtype=torch.float64)
    if activation == "step":
        half = torch.full_like(s, 0.5)
        return half, half
    if activation == "relu":
        return s / 2, 1.5 * s.square()
    # The trapezoid rule on a fine uniform grid converges geometrically for smooth integrands
    # and, unlike Gauss-Hermite, resolves the steep transition of tanh(sigma t) at large sigma.
    t = torch.linspace(-12.0, 12.0, num_nodes, dtype=torch.float64, device=s.device)
    weights = torch.exp(-t.square() / 2) * (t[1] - t[0]) / math.sqrt(2 * math.pi)
    h = make_activation(activation)(s.sqrt()[..., None] * t)
    return (weights * h.square()).sum(-1), (weights * h.pow(4)).sum(-1)


def prior_variance(
    x: Tensor,
    *,
    activation: str = "tanh",
    sigma_u: float = 1.0,
    sigma_a: float = 1.0,
    omega_v: float = 1.0,
    sigma_b: float = 1.0,
) -> Tensor:
    """The limit prior variance ``sigma_b^2 + omega_v^2 V(x)`` of ``f(x)`` at each row of ``x``.

    ``V(x) = E[h_j(x)^2]`` with the pre-activation ``z ~ N(0, sigma_a^2 + sigma_u^2 |x|^2)``. It is
    also the exact variance at every finite width, since each of the ``q`` units contributes
    ``omega_v^2 V(x) / q``. (The lecture's slide writes ``sigma_b^2 + omega_v^2 sigma_v^2 V(x)``;
    the extra ``sigma_v^2`` is a slip: ``q sigma_v^2 = omega_v^2``.)
    """
    x = _inputs(x)
    _check_hyper(sigma_u, sigma_a, omega_v, sigma_b)
    s = sigma_a**2 + sigma_u**2 * x.double().square().sum(-1)
    v, _ = hidden_moments(activation, s)
    return (sigma_b**2 + omega_v**2 * v).to(x.dtype)


@dataclass(frozen=True)
class NealFigure:
    """Functions of Neal's Figure 2.2: ``functions[sigma_u]`` has shape ``(num_functions, N)``."""

    x: Tensor
    functions: dict[float, Tensor]
    width: int
    activation: str


def neal_figure_2_2(
    x: Tensor | None = None,
    *,
    sigma_u: tuple[float, ...] = (5.0, 20.0),
    width: int = 10_000,
    num_functions: int = 2,
    activation: str = "tanh",
    seed: int = 1995,
) -> NealFigure:
    """Reproduce Neal's Figure 2.2: prior functions of a wide tanh network at two ``sigma_u``.

    Each setting has ``sigma_a = sigma_u`` and ``sigma_b = omega_v = 1``, and all settings use the
    same seed, so the functions are the same networks with rescaled input weights: larger
    ``sigma_u`` gives rougher functions (a step function is the limit ``sigma_u -> infinity``).
    Plot it with :func:`bayesdl.plots.plot_prior_functions`.

    Arguments:
        x: Inputs, ``(N,)``; default 500 points on ``[-1, 1]`` as in the figure.
        sigma_u: The input-weight scales, one panel each.
        width: Hidden units.
        num_functions: Functions per panel.
        activation: Hidden activation.
        seed: Seed shared by all panels.
    """
    if x is None:
        x = torch.linspace(-1.0, 1.0, 500)
    x = check_tensor("x", x, ndim=1)
    functions = {
        float(s): sample_prior_functions(
            x,
            num_functions,
            width,
            activation=activation,
            sigma_u=s,
            sigma_a=s,
            omega_v=1.0,
            sigma_b=1.0,
            seed=seed,
        )
        for s in sigma_u
    }
    return NealFigure(x=x, functions=functions, width=width, activation=activation)
