"""Unconstrained monotonic neural network (UMNN) transforms for normalizing flows, on Pyro.

:class:`UMNN` is a Pyro ``TransformModule`` and :class:`ConditionalUMNN` a
``ConditionalTransformModule``; both plug into ``pyro.distributions.TransformedDistribution``
like Pyro's own autoregressive and spline transforms. Pyro has no such transform (zuko and nflows
do, outside Pyro).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import Tensor, nn

from bayesdl._validation import check_choice, check_positive, check_tensor
from bayesdl.nn import MLP

__all__ = ["QUADRATURES", "UMNN", "ConditionalUMNN", "quadrature_rule"]

QUADRATURES = ("clenshaw-curtis", "gauss-legendre")


def quadrature_rule(
    num_nodes: int,
    rule: str = "clenshaw-curtis",
    *,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    r"""Nodes and weights of a quadrature rule on ``[-1, 1]``.

    ``sum(w * g(c))`` approximates \( \int_{-1}^{1} g(c)\, dc \). Clenshaw–Curtis uses the
    Chebyshev extreme points ``c_k = cos(k pi / n)``, ``k = 0..n`` (``n = num_nodes - 1``), and
    integrates polynomials of degree ``n`` exactly; Gauss–Legendre integrates degree
    ``2 num_nodes - 1`` exactly. Both have positive weights, so a positive integrand always has
    a positive quadrature.

    Arguments:
        num_nodes: Number of nodes, ``>= 2``.
        rule: One of :data:`QUADRATURES`.
        dtype: Floating dtype of the result (computed in float64 first).

    Returns:
        ``(nodes, weights)``, each of shape ``(num_nodes,)``; the weights sum to 2.

    References:
        Clenshaw, C. W., & Curtis, A. R. (1960). A method for numerical integration on an
        automatic computer. Numerische Mathematik, 2, 197-205.

        Waldvogel, J. (2006). Fast construction of the Fejér and Clenshaw–Curtis quadrature
        rules. BIT Numerical Mathematics, 46, 195-202.
    """
    check_positive("num_nodes", num_nodes, integer=True)
    if num_nodes < 2:
        raise ValueError(f"num_nodes must be >= 2, got {num_nodes}")
    check_choice("rule", rule, QUADRATURES)
    if rule == "gauss-legendre":
        # The Golub–Welsch eigenproblem of the Jacobi matrix of the Legendre polynomials.
        k = torch.arange(1, num_nodes, dtype=torch.float64)
        off = k / torch.sqrt(4 * k**2 - 1)
        jacobi = torch.diag(off, 1) + torch.diag(off, -1)
        nodes, vectors = torch.linalg.eigh(jacobi)
        weights = 2 * vectors[0] ** 2
    else:
        n = num_nodes - 1
        k = torch.arange(num_nodes, dtype=torch.float64)
        nodes = torch.cos(k * math.pi / n)
        # Explicit weights (Waldvogel 2006): w_k = c_k / n (1 - sum_j b_j cos(2 j k pi / n) / (4 j^2 - 1)).
        j = torch.arange(1, n // 2 + 1, dtype=torch.float64)
        b = 2.0 - (2 * j == n).double()  # float64: torch.where(.., 1.0, 2.0) is float32
        series = (b / (4 * j**2 - 1) * torch.cos(2 * torch.outer(k, j) * math.pi / n)).sum(-1)
        c = 2.0 - ((k == 0) | (k == n)).double()
        weights = c / n * (1 - series)
    return nodes.to(dtype), weights.to(dtype)


def _check_widths(name: str, widths: Sequence[int]) -> tuple[int, ...]:
    if isinstance(widths, int) and not isinstance(widths, bool):
        widths = (widths,)
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(widths).__name__}")
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"{name} must hold positive integer widths, got {tuple(widths)}")
    if len(widths) == 0:
        raise ValueError(f"{name} must hold at least one width, got ()")
    return tuple(widths)


class _Settings:
    """The checked hyperparameters shared by :class:`UMNN` and :class:`ConditionalUMNN`."""

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int],
        embedding_dim: int,
        integrand_hidden: Sequence[int],
        num_quadrature: int,
        quadrature: str,
        min_derivative: float,
        tol: float,
        max_iter: int,
    ) -> None:
        check_positive("dim", dim, integer=True)
        self.hidden = _check_widths("hidden", hidden)
        check_positive("embedding_dim", embedding_dim, integer=True)
        self.integrand_hidden = _check_widths("integrand_hidden", integrand_hidden)
        check_positive("num_quadrature", num_quadrature, integer=True)
        if num_quadrature < 2:
            raise ValueError(f"num_quadrature must be >= 2, got {num_quadrature}")
        check_choice("quadrature", quadrature, QUADRATURES)
        check_positive("min_derivative", min_derivative, strict=False)
        check_positive("tol", tol)
        check_positive("max_iter", max_iter, integer=True)
        self.dim = dim
        self.embedding_dim = embedding_dim
        self.num_quadrature = num_quadrature
        self.quadrature = quadrature
        self.min_derivative = float(min_derivative)
        self.tol = float(tol)
        self.max_iter = max_iter


class _Integrand(nn.Module):
    """``f(t; h) = ELU(g([t, h])) + 1 + min_derivative > 0``, one network shared by all dimensions."""

    def __init__(self, embedding_dim: int, hidden: tuple[int, ...], min_derivative: float) -> None:
        super().__init__()
        # tanh, not ReLU: f must be smooth in t for the quadrature to converge quickly
        self.net = MLP(1 + embedding_dim, 1, hidden=hidden, activation="tanh")
        self.min_derivative = min_derivative

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        """``t``: ``(..., D, K)`` points; ``h``: ``(..., D, E)`` embeddings; result ``(..., D, K)``."""
        h = h.unsqueeze(-2).expand(*t.shape, h.shape[-1])
        g = self.net(torch.cat([t.unsqueeze(-1), h], dim=-1)).squeeze(-1)
        return F.elu(g) + 1.0 + self.min_derivative


class _MonotonicAutoregressive(TransformModule):
    """The UMNN bijection given a conditioner; :class:`UMNN` and ``ConditionalUMNN.condition``
    build it (see :class:`UMNN` for the maths)."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True
    sign = +1

    def __init__(
        self,
        settings: _Settings,
        conditioner: nn.Module,
        integrand: _Integrand,
        context: Tensor | None = None,
    ) -> None:
        super().__init__(cache_size=1)
        self.settings = settings
        self.conditioner = conditioner
        self.integrand = integrand
        self.context = context
        nodes, weights = quadrature_rule(settings.num_quadrature, settings.quadrature)
        # Map [-1, 1] to [0, 1]: F(x) = x * sum_k (w_k / 2) f(x s_k).
        self.register_buffer("nodes", (nodes + 1) / 2, persistent=False)
        self.register_buffer("weights", weights / 2, persistent=False)
        self._cache_version: tuple[int, ...] | None = None
        self._cached_log_df: Tensor | None = None
        self.last_iterations = 0

    # -- Pyro's cache keys on tensor identity only: an optimiser step changes the parameters in
    # place, and the same data tensor would then get a stale result. The parameters' version
    # counters (bumped by every in-place update, load_state_dict included) guard the cache.

    def _check_cache(self) -> None:
        watched = [*self.parameters(), *([] if self.context is None else [self.context])]
        version = tuple(t._version for t in watched)
        if version != self._cache_version:
            self._cached_x_y = None, None
            self._cached_log_df = None
            self._cache_version = version

    def __call__(self, x: Tensor) -> Tensor:
        self._check_cache()
        return super().__call__(x)

    def _inv_call(self, y: Tensor) -> Tensor:
        self._check_cache()
        return super()._inv_call(y)

    # -- the pieces -------------------------------------------------------------------------

    def _embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``beta`` of shape ``(..., D)`` and ``h`` of shape ``(..., D, E - 1)`` at ``x``."""
        out = (
            self.conditioner(x)
            if self.context is None
            else self.conditioner(x, context=self.context)
        ).transpose(-1, -2)  # (..., E, D) -> (..., D, E)
        return out[..., 0], out[..., 1:]

    def _monotone(self, x: Tensor, beta: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """``F(x) = int_0^x f(t; h) dt + beta`` and ``f(x; h)``, elementwise over ``(..., D)``."""
        nodes = self.nodes.to(x)
        # One batched network call for the K quadrature nodes and the end point x itself.
        t = torch.cat([x.unsqueeze(-1) * nodes, x.unsqueeze(-1)], dim=-1)
        f = self.integrand(t, h)
        integral = x * (f[..., :-1] * self.weights.to(x)).sum(-1)
        return integral + beta, f[..., -1]

    def _call(self, x: Tensor) -> Tensor:
        beta, h = self._embed(x)
        y, df = self._monotone(x, beta, h)
        self._cached_log_df = df.log()
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        d = self.settings.dim
        with torch.no_grad():
            x = self._solve(y)
        needs_grad = torch.is_grad_enabled() and (
            y.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if needs_grad:
            # One Newton step taken with gradients: its value is the root found above (to within
            # tol), and its gradient is the implicit one, dx/dθ = -(dF/dθ) / f; going through the
            # dimensions in order carries the dependence of x_i on x_{<i} via the embedding.
            cols: list[Tensor] = []
            for i in range(d):
                current = torch.cat([*cols, x[..., i:]], dim=-1)
                beta, h = self._embed(current)
                xi = x[..., i : i + 1]
                fi, dfi = self._monotone(xi, beta[..., i : i + 1], h[..., i : i + 1, :])
                cols.append(xi - (fi - y[..., i : i + 1]) / dfi.detach())
            x = torch.cat(cols, dim=-1)
        self._cached_log_df = None  # computed on demand from x by log_abs_det_jacobian
        return x

    def _solve(self, y: Tensor) -> Tensor:
        """Root of ``F(x) = y``, one dimension after the other (x_i needs x_{<i}), all points
        at once: bracket, then Newton steps safeguarded by bisection. Points that have converged
        drop out of the batch, so a few slow ones do not make every point pay."""
        s = self.settings
        d = s.dim
        flat_y = y.reshape(-1, d)
        m = flat_y.shape[0]
        x = torch.zeros_like(flat_y)
        iterations = 0
        for i in range(d):
            beta, h = self._embed(x.reshape(y.shape))  # the masks: h_i sees x_{<i} only, solved
            beta_i = beta.reshape(m, d)[:, i]
            h_i = h.reshape(m, d, -1)[:, i : i + 1, :]
            y_i = flat_y[:, i]

            def value(z: Tensor, idx: Tensor, beta_i=beta_i, h_i=h_i) -> tuple[Tensor, Tensor]:
                fz, dfz = self._monotone(z.unsqueeze(-1), beta_i[idx].unsqueeze(-1), h_i[idx])
                return fz.squeeze(-1), dfz.squeeze(-1)

            # Bracket expansion: f >= min_derivative makes F onto R, so doubling reaches y. A
            # failed end becomes the other end (the root lies beyond it).
            lo = torch.full_like(y_i, -1.0)
            hi = torch.full_like(y_i, 1.0)
            idx = torch.arange(m, device=y.device)
            for _ in range(64):
                ends, _ = value(torch.cat([lo[idx], hi[idx]]), torch.cat([idx, idx]))
                too_high = ends[: idx.numel()] > y_i[idx]  # F(lo) > y: root below lo
                too_low = ends[idx.numel() :] < y_i[idx]  # F(hi) < y: root above hi
                hi[idx[too_high]] = lo[idx[too_high]]
                lo[idx[too_high]] *= 2
                lo[idx[too_low]] = hi[idx[too_low]]
                hi[idx[too_low]] *= 2
                idx = idx[too_high | too_low]
                if idx.numel() == 0:
                    break
            else:
                raise RuntimeError(
                    "UMNN inverse: could not bracket the root within +/- 2^64; "
                    "the input holds non-finite values or the integrand vanishes"
                )
            z = (lo + hi) / 2
            idx = torch.arange(m, device=y.device)
            for _ in range(s.max_iter):
                iterations += 1
                zi = z[idx]
                fz, dfz = value(zi, idx)
                r = fz - y_i[idx]
                low = torch.where(r <= 0, zi, lo[idx])
                high = torch.where(r >= 0, zi, hi[idx])
                newton = zi - r / dfz
                step = torch.where((newton <= low) | (newton >= high), (low + high) / 2, newton)
                converged = ((step - zi).abs() <= s.tol) | ((high - low) <= s.tol)
                lo[idx], hi[idx], z[idx] = low, high, step
                idx = idx[~converged]
                if idx.numel() == 0:
                    break
            x[:, i] = z
        self.last_iterations = iterations
        return x.reshape(y.shape)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``sum_i log f(x_i; h_i)``: the Jacobian is triangular with diagonal ``f(x_i; h_i)``."""
        self._check_cache()
        x_old, y_old = self._cached_x_y
        if self._cached_log_df is not None and x is x_old and y is y_old:
            return self._cached_log_df.sum(-1)
        _, h = self._embed(x)
        t = x.unsqueeze(-1)
        return self.integrand(t, h).squeeze(-1).log().sum(-1)


class UMNN(_MonotonicAutoregressive):
    r"""Unconstrained monotonic neural network transform (Wehenkel & Louppe, 2019).

    Each output dimension is a strictly increasing function of its input,

    \[ y_i = F_i(x) = \int_0^{x_i} f(t; h_i)\, dt + \beta(h_i), \qquad
       f(t; h) = \mathrm{ELU}(g([t, h])) + 1 + \epsilon > 0, \]

    where ``g`` is an unconstrained MLP with tanh hidden units (the *integrand network*, shared
    by all dimensions; smooth in ``t``, so the quadrature converges fast, where ReLU kinks would
    limit it to about 1e-5 with 40 nodes) and
    ``(beta_i, h_i)`` is an embedding of ``x_{<i}`` produced by a MADE-style masked network
    (Pyro's :class:`~pyro.nn.AutoRegressiveNN`, identity order), so the transform is
    autoregressive: the Jacobian is lower-triangular with diagonal ``f(x_i; h_i)`` and

    \[ \log |\det J| = \textstyle\sum_i \log f(x_i; h_i). \]

    The integral is computed by quadrature on ``[0, x_i]``, batched over points, dimensions and
    nodes in one call of the integrand network (Clenshaw–Curtis by default; its nested nodes
    and positive weights are the paper's choice); gradients flow through the quadrature by
    ordinary backpropagation (not the paper's memory-saving custom backward). ``epsilon =
    min_derivative`` bounds the slope below, which makes every ``F_i`` onto the real line, so
    the inverse exists for every ``y``.

    The inverse has no closed form: dimension after dimension (``x_i`` needs ``x_{<i}``), all
    points at once, the root of ``F_i(x_i) = y_i`` is bracketed by doubling ``[-1, 1]`` and then
    found by Newton steps that fall back to bisection whenever they leave the bracket; a point
    stops when its last step, or its bracket, is below ``tol`` (the root is unique since ``F_i``
    is increasing), or after ``max_iter`` iterations; points that have converged leave the batch.
    ``inverse(forward(x))`` then matches ``x`` to ``tol`` (tested with float32 inputs of scale 3). With gradients enabled, a final Newton step carries the implicit-function
    gradient, ``dx/dθ = -(∂F/∂θ) / f``, so log-densities computed through the inverse can be
    trained too.

    Direction: the forward map ``F`` is the cheap one (one quadrature). For density estimation
    use ``UMNN(...).inv`` as the flow's transform: ``log_prob`` is then a quadrature and
    ``sample`` a root find. ``TransformedDistribution(base, [UMNN(...)])`` also works, with the
    costs the other way round.

    Results are cached as for Pyro's transforms (``cache_size=1``), and the cache is dropped
    whenever a parameter changed in place (an optimiser step, ``load_state_dict``), which Pyro's
    identity-keyed cache would otherwise miss.

    Arguments:
        dim: Event dimension ``D``.
        hidden: Hidden widths of the masked conditioner network.
        embedding_dim: Size ``E`` of each dimension's embedding; one entry is ``beta_i``, the
            other ``E - 1`` are the integrand network's conditioning input.
        integrand_hidden: Hidden widths of the integrand network.
        num_quadrature: Number of quadrature nodes, ``>= 2``.
        quadrature: ``"clenshaw-curtis"`` or ``"gauss-legendre"``.
        min_derivative: Lower bound ``epsilon >= 0`` added to ``f``.
        tol: Root-finding tolerance on ``x`` (last step or bracket width).
        max_iter: Maximum Newton/bisection iterations per dimension.

    Example:
        >>> import pyro.distributions as dist
        >>> umnn = UMNN(2, hidden=(16,), integrand_hidden=(16,))
        >>> flow = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1).to_event(1), [umnn.inv])
        >>> flow.log_prob(torch.zeros(5, 2)).shape, flow.sample((3,)).shape
        (torch.Size([5]), torch.Size([3, 2]))

    References:
        Wehenkel, A., & Louppe, G. (2019). Unconstrained monotonic neural networks. Advances in
        Neural Information Processing Systems 32 (NeurIPS).

        Germain, M., Gregor, K., Murray, I., & Larochelle, H. (2015). MADE: Masked autoencoder
        for distribution estimation. ICML.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        *,
        embedding_dim: int = 8,
        integrand_hidden: Sequence[int] = (32, 32),
        num_quadrature: int = 20,
        quadrature: str = "clenshaw-curtis",
        min_derivative: float = 1e-3,
        tol: float = 1e-5,
        max_iter: int = 100,
    ) -> None:
        settings = _Settings(
            dim,
            hidden,
            embedding_dim,
            integrand_hidden,
            num_quadrature,
            quadrature,
            min_derivative,
            tol,
            max_iter,
        )
        with warnings.catch_warnings():  # Pyro warns for dim == 1, which is still valid here
            warnings.simplefilter("ignore", UserWarning)
            conditioner = AutoRegressiveNN(
                dim,
                list(settings.hidden),
                param_dims=[embedding_dim],
                permutation=torch.arange(dim),
            )
        integrand = _Integrand(embedding_dim - 1, settings.integrand_hidden, min_derivative)
        super().__init__(settings, conditioner, integrand)
        self.dim = dim

    def extra_repr(self) -> str:
        s = self.settings
        return f"dim={s.dim}, num_quadrature={s.num_quadrature}, quadrature={s.quadrature!r}"


class ConditionalUMNN(ConditionalTransformModule):
    r"""UMNN transform of ``y`` given a context ``x``, for conditional densities ``p(y | x)``.

    ``condition(context)`` returns the :class:`UMNN` bijection whose embeddings
    ``(beta_i, h_i)`` come from a masked network of ``y_{<i}`` *and* the context (Pyro's
    :class:`~pyro.nn.ConditionalAutoRegressiveNN`), with the same quadrature, inverse and
    log-determinant as :class:`UMNN`. With ``dist.ConditionalTransformedDistribution(base,
    [t.inv])`` (the cheap direction for ``log_prob``), ``d.condition(x).log_prob(y)`` is the
    conditional log-density.

    Arguments:
        dim: Event dimension ``D`` of ``y``.
        context_dim: Dimension of the context ``x``.
        hidden: As for :class:`UMNN` (the masked network now also reads the context).
        embedding_dim: As for :class:`UMNN`.
        integrand_hidden: As for :class:`UMNN`.
        num_quadrature: As for :class:`UMNN`.
        quadrature: As for :class:`UMNN`.
        min_derivative: As for :class:`UMNN`.
        tol: As for :class:`UMNN`.
        max_iter: As for :class:`UMNN`.

    Example:
        >>> t = ConditionalUMNN(2, context_dim=3, hidden=(16,))
        >>> t.condition(torch.zeros(5, 3))(torch.zeros(5, 2)).shape
        torch.Size([5, 2])

    References:
        Wehenkel, A., & Louppe, G. (2019). Unconstrained monotonic neural networks. Advances in
        Neural Information Processing Systems 32 (NeurIPS).
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True
    event_dim = 1

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden: Sequence[int] = (64, 64),
        *,
        embedding_dim: int = 8,
        integrand_hidden: Sequence[int] = (32, 32),
        num_quadrature: int = 20,
        quadrature: str = "clenshaw-curtis",
        min_derivative: float = 1e-3,
        tol: float = 1e-5,
        max_iter: int = 100,
    ) -> None:
        super().__init__()
        self.settings = _Settings(
            dim,
            hidden,
            embedding_dim,
            integrand_hidden,
            num_quadrature,
            quadrature,
            min_derivative,
            tol,
            max_iter,
        )
        check_positive("context_dim", context_dim, integer=True)
        self.dim = dim
        self.context_dim = context_dim
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.conditioner = ConditionalAutoRegressiveNN(
                dim,
                context_dim,
                list(self.settings.hidden),
                param_dims=[embedding_dim],
                permutation=torch.arange(dim),
            )
        self.integrand = _Integrand(
            embedding_dim - 1, self.settings.integrand_hidden, min_derivative
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}"

    def condition(self, context: Tensor) -> _MonotonicAutoregressive:
        """The UMNN bijection for ``context`` of shape ``(..., context_dim)`` (broadcast against
        the batch shape of the transformed values)."""
        check_tensor("context", context)
        if context.ndim == 0 or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context must have last dimension context_dim={self.context_dim}, "
                f"got shape {tuple(context.shape)}"
            )
        return _MonotonicAutoregressive(self.settings, self.conditioner, self.integrand, context)
