"""Normalizing flows on Pyro transforms: densities ``p(x)`` and conditional densities ``p(y | x)``.

A flow maps a standard Normal base ``z`` through a composition ``f = f_K o ... o f_1`` of
invertible neural transformations; by the change of variables,

    log p(x) = log p_z(g(x)) + log |det J_g(x)|,    g = f^{-1}.

:class:`Flow` is a plain ``nn.Module`` whose :meth:`Flow.distribution` (or ``flow()``) returns a
fresh Pyro ``TransformedDistribution`` with ``log_prob`` and ``sample``. :class:`ConditionalFlow`
is the conditional version: ``flow(x)`` returns a distribution over ``y`` with batch shape
``x.shape[:-1]``, the interface of :class:`~bayesdl.distributions.MixtureDensityNetwork`, so the
two are interchangeable. Both have a :meth:`~Flow.model` method returning the Pyro program (the
flow as the observation distribution inside ``pyro.plate("data")``) that
``bayesdl.fit(model, None, x[, y])`` fits by maximum likelihood.

Pyro's transforms cache their last ``(x, y)`` pair and, for splines and couplings, intermediate
values of the log-determinant. A distribution kept across an optimiser step would reuse numbers
computed with the old parameters; the flows here therefore build their transforms' distribution
afresh and clear every cache on each call, and the fitted model calls them once per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN, ConditionalDenseNN, DenseNN
from torch import Tensor, nn

from bayesdl._validation import check_choice, check_positive, check_tensor
from bayesdl.distributions.transforms import UMNN, ConditionalUMNN
from bayesdl.nn import ACTIVATIONS
from bayesdl.nn import activation as make_activation

__all__ = [
    "CONDITIONAL_FAMILIES",
    "FAMILIES",
    "SPLINE_ORDERS",
    "ConditionalFlow",
    "Flow",
]

#: Density-flow families: ``"nsf"`` (rational-quadratic spline coupling, Durkan et al. 2019),
#: ``"realnvp"`` (affine coupling, Dinh et al. 2017), ``"maf"`` (affine autoregressive,
#: Papamakarios et al. 2017), ``"spline_ar"`` (spline autoregressive, Durkan et al. 2019) and
#: ``"umnn"`` (monotonic integral transform, Wehenkel & Louppe 2019; see
#: :mod:`bayesdl.distributions.transforms`).
FAMILIES = ("nsf", "realnvp", "maf", "spline_ar", "umnn")

#: Conditional families: ``"spline"`` (element-wise spline with context-dependent knots),
#: ``"spline_ar"``, ``"maf"``, ``"realnvp"`` (``y_dim >= 2``) and ``"umnn"``.
CONDITIONAL_FAMILIES = ("spline", "spline_ar", "maf", "realnvp", "umnn")


# Pyro's autoregressive transforms are one pass in the direction base -> data (IAF); MAF
# (Papamakarios et al. 2017) puts the single pass in the direction data -> base, where the
# density is evaluated during training, so these layers are used inverted.
_DENSITY_DIRECTION = ("maf", "spline_ar")


def _check_hidden(hidden: Sequence[int] | int) -> list[int]:
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of ints, got {type(hidden).__name__}")
    if len(hidden) == 0:
        raise ValueError("hidden must hold at least one width")
    for width in hidden:
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"hidden must hold positive integer widths, got {tuple(hidden)}")
    return list(hidden)


def _clear_cache(transform: Any) -> None:
    if getattr(transform, "_cache_size", 0) == 1:
        transform._cached_x_y = None, None
    for part in getattr(transform, "parts", ()):
        _clear_cache(part)


def _check_rows(name: str, value: Tensor, dim: int) -> Tensor:
    check_tensor(name, value)
    if value.ndim == 0 or value.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (..., {dim}), got {tuple(value.shape)}")
    return value


def _standardizer(data: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"{name} must hold at least two rows, got shape {tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return data.mean(0), data.std(0).clamp_min(1e-6)


#: Orders of the monotonic rational splines: ``"quadratic"`` (rational-quadratic, Durkan et al.
#: 2019) or ``"linear"`` (rational-linear, Dolatabadi et al. 2020).
SPLINE_ORDERS = ("quadratic", "linear")


def _spline_coupling(
    dim: int, hidden: list[int], count_bins: int, bound: float, order: str
) -> T.SplineCoupling:
    # Pyro's helper `spline_coupling` has no `order`; its parameter layout depends on it.
    split = dim // 2
    rest = dim - split
    params = [rest * p for p in _spline_params(count_bins, order)]
    hypernet = DenseNN(split, hidden, param_dims=params)
    return T.SplineCoupling(dim, split, hypernet, count_bins, bound, order)


def _spline_params(count_bins: int, order: str) -> list[int]:
    # Widths, heights, inner derivatives (and the rational-linear lambdas) per dimension. Pyro's
    # helpers `spline_autoregressive` and `conditional_spline_autoregressive` always add the
    # lambdas, which breaks order="quadratic".
    params = [count_bins, count_bins, count_bins - 1]
    return [*params, count_bins] if order == "linear" else params


def _spline_autoregressive(
    dim: int, hidden: list[int], count_bins: int, bound: float, order: str
) -> T.SplineAutoregressive:
    arn = AutoRegressiveNN(dim, hidden, param_dims=_spline_params(count_bins, order))
    return T.SplineAutoregressive(dim, arn, count_bins=count_bins, bound=bound, order=order)


def _conditional_spline_autoregressive(
    dim: int,
    context_dim: int,
    hidden: list[int],
    count_bins: int,
    bound: float,
    order: str,
    nonlinearity: nn.Module,
) -> T.ConditionalSplineAutoregressive:
    arn = ConditionalAutoRegressiveNN(
        dim,
        context_dim,
        hidden,
        param_dims=_spline_params(count_bins, order),
        nonlinearity=nonlinearity,
    )
    return T.ConditionalSplineAutoregressive(
        dim, arn, count_bins=count_bins, bound=bound, order=order
    )


def _conditional_spline(
    dim: int,
    context_dim: int,
    hidden: list[int],
    count_bins: int,
    bound: float,
    order: str,
    nonlinearity: nn.Module,
) -> T.ConditionalSpline:
    # Pyro's helper `conditional_spline` builds the same network with a fixed ReLU.
    params = [dim * p for p in _spline_params(count_bins, order)]
    hypernet = DenseNN(context_dim, hidden, param_dims=params, nonlinearity=nonlinearity)
    return T.ConditionalSpline(hypernet, dim, count_bins, bound=bound, order=order)


def _conditional_affine_coupling(
    dim: int, context_dim: int, hidden: list[int], nonlinearity: nn.Module
) -> T.ConditionalAffineCoupling:
    # Pyro's helper `conditional_affine_coupling` builds the same network with a fixed ReLU.
    split = dim // 2
    rest = dim - split
    hypernet = ConditionalDenseNN(
        split, context_dim, hidden, param_dims=[rest, rest], nonlinearity=nonlinearity
    )
    return T.ConditionalAffineCoupling(split, hypernet)


class _FlowBase(nn.Module):
    """Shared checks and the output standardization of both flows."""

    def _check_common(
        self,
        dim: int,
        family: str,
        families: Sequence[str],
        num_layers: int,
        count_bins: int,
        bound: float,
        order: str,
    ) -> None:
        check_positive("num_layers", num_layers, integer=True)
        check_choice("order", order, SPLINE_ORDERS)
        check_positive("count_bins", count_bins, integer=True)
        check_positive("bound", bound)
        check_choice("family", family, families)
        if count_bins < 2:
            raise ValueError(f"count_bins must be >= 2, got {count_bins}")
        if family in ("nsf", "realnvp") and dim < 2:
            raise ValueError(f"family={family!r} is a coupling flow and needs dim >= 2, got {dim}")

    def _affine_out(self) -> T.AffineTransform:
        # Last transform: data = loc + scale * (output of the learned layers), so the layers work
        # on standardized data, where the spline's interval [-bound, bound] covers the data.
        # cache_size=1 like Pyro's own transforms: log_prob of a fresh sample then reads every
        # layer's inverse from the caches instead of recomputing it (sequential for MAF).
        return T.AffineTransform(self.loc, self.scale, event_dim=1, cache_size=1)


class Flow(_FlowBase):
    r"""A normalizing flow for densities ``p(x)`` on ``R^dim``, built from Pyro transforms.

    The flow is ``x = loc + scale * f_K(... f_1(z))`` with ``z ~ N(0, I)``; between two learned
    layers the coordinates are reversed, so that couplings and autoregressions alternate which
    coordinates condition which. ``loc`` and ``scale`` are buffers (a fixed standardization,
    set from data by :meth:`initialize`), not trained.

    Arguments:
        dim: Dimension of the data.
        family: One of :data:`FAMILIES`.
        num_layers: Number of learned transforms ``K``.
        hidden: Hidden widths of each layer's conditioner network.
        count_bins: Bins of the rational-quadratic splines (``"nsf"``, ``"spline_ar"``).
        bound: The splines act on ``[-bound, bound]`` (in standardized units) and are the
            identity outside.
        order: Order of the splines, one of :data:`SPLINE_ORDERS`.
        **kwargs: Extra keyword arguments of the UMNN transform (``"umnn"`` only).

    Attributes:
        layers: The learned ``TransformModule`` s, in order from the base to the data.

    Example:
        >>> flow = Flow(2, "nsf", num_layers=2, hidden=(16,))
        >>> d = flow()
        >>> d.sample((5,)).shape, d.log_prob(torch.zeros(3, 2)).shape
        (torch.Size([5, 2]), torch.Size([3]))

    References:
        Rezende, D. J., & Mohamed, S. (2015). Variational inference with normalizing flows. ICML.

        Dinh, L., Sohl-Dickstein, J., & Bengio, S. (2017). Density estimation using Real NVP.
        ICLR.

        Papamakarios, G., Pavlakou, T., & Murray, I. (2017). Masked autoregressive flow for
        density estimation. NeurIPS.

        Durkan, C., Bekasov, A., Murray, I., & Papamakarios, G. (2019). Neural spline flows.
        NeurIPS.

        Papamakarios, G., Nalisnick, E., Rezende, D. J., Mohamed, S., & Lakshminarayanan, B.
        (2021). Normalizing flows for probabilistic modeling and inference. JMLR, 22(57), 1-64.

        Wehenkel, A., & Louppe, G. (2019). Unconstrained monotonic neural networks. NeurIPS.
    """

    def __init__(
        self,
        dim: int,
        family: str = "nsf",
        *,
        num_layers: int = 4,
        hidden: Sequence[int] | int = (64, 64),
        count_bins: int = 8,
        bound: float = 3.0,
        order: str = "quadratic",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_positive("dim", dim, integer=True)
        hidden = _check_hidden(hidden)
        self._check_common(dim, family, FAMILIES, num_layers, count_bins, bound, order)
        if kwargs and family != "umnn":
            raise TypeError(f"unexpected keyword arguments for family={family!r}: {list(kwargs)}")
        self.dim = dim
        self.family = family
        self.num_layers = num_layers
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            if family == "nsf":
                layer = _spline_coupling(dim, hidden, count_bins, bound, order)
            elif family == "realnvp":
                layer = T.affine_coupling(dim, hidden_dims=hidden)
            elif family == "maf":
                layer = T.affine_autoregressive(dim, hidden_dims=hidden)
            elif family == "spline_ar":
                layer = _spline_autoregressive(dim, hidden, count_bins, bound, order)
            else:
                layer = UMNN(dim, hidden=hidden, **kwargs)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.register_buffer("base_loc", torch.zeros(dim))
        self.register_buffer("base_scale", torch.ones(dim))
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("permutation", torch.arange(dim - 1, -1, -1))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, family={self.family!r}, num_layers={self.num_layers}"

    def transforms(self) -> list[Any]:
        """The transforms from the base to the data, with fresh caches.

        Returns:
            Learned layers with a reversal of the coordinates between two of them, then the
            fixed affine map to data units.
        """
        out: list[Any] = []
        for k, layer in enumerate(self.layers):
            if k > 0 and self.dim > 1:
                out.append(T.Permute(self.permutation))
            _clear_cache(layer)
            out.append(layer.inv if self.family in _DENSITY_DIRECTION else layer)
        out.append(self._affine_out())
        return out

    def distribution(self) -> dist.TransformedDistribution:
        """A fresh ``TransformedDistribution`` with the current parameters.

        Build one per use after parameters change (the flow's own :meth:`log_prob`,
        :meth:`sample` and :meth:`model` do): a distribution kept across an optimiser step holds
        transforms whose caches were filled with the old parameters.
        """
        base = dist.Normal(self.base_loc, self.base_scale).to_event(1)
        return dist.TransformedDistribution(base, self.transforms())

    def forward(self) -> dist.TransformedDistribution:
        """Same as :meth:`distribution`, so that ``flow()`` is the distribution."""
        return self.distribution()

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` per point: ``x`` of shape ``(..., dim)``, result of shape ``(...)``."""
        return self.distribution().log_prob(_check_rows("x", x, self.dim))

    def sample(self, sample_shape: Sequence[int] | int = ()) -> Tensor:
        """Draw samples of shape ``sample_shape + (dim,)`` (without gradients).

        For ``"maf"`` and ``"spline_ar"`` sampling runs the autoregressive layers one coordinate
        at a time (their single pass is the density direction). A float64 ``"maf"`` flow cannot
        sample with Pyro 1.9.2: its sequential inverse allocates a float32 buffer.
        """
        if isinstance(sample_shape, int):
            sample_shape = (sample_shape,)
        with torch.no_grad():
            return self.distribution().sample(torch.Size(sample_shape))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> Flow:
        """Set the fixed output standardization to the mean and standard deviation of ``x``.

        The learned layers then model standardized data, for which the default ``bound = 3`` of
        the splines covers the bulk of the data.

        Arguments:
            x: Training data of shape ``(N, dim)``.

        Returns:
            ``self``, for chaining.
        """
        _check_rows("x", x, self.dim)
        loc, scale = _standardizer(x, "x")
        self.loc.copy_(loc)
        self.scale.copy_(scale)
        return self

    def model(self, name: str = "flow") -> Callable[..., None]:
        """The Pyro program ``x_i ~ p(x)`` (observation site ``"obs"`` in ``plate("data")``).

        ``bayesdl.fit(flow.model(), None, x)`` fits the flow by maximum likelihood: the model
        registers this module's parameters with ``pyro.module(name, ...)`` and scores the rows
        of ``x`` under a fresh :meth:`distribution` on every call.

        Arguments:
            name: Name of the module in Pyro's param store (an existing entry of that name wins
                over this module's parameters: clear the store or use distinct names).

        Returns:
            A callable ``model(x, y=None)``.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")

        def flow_model(x: Tensor, y: Tensor | None = None) -> None:
            pyro.module(name, self)
            _check_rows("x", x, self.dim)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", self.distribution(), obs=x)

        return flow_model


class ConditionalFlow(_FlowBase):
    r"""A conditional normalizing flow ``p(y | x)``: ``flow(x)`` is a distribution over ``y``.

    Given an input ``x``, ``y = loc + scale * f_K(... f_1(z; x); x)`` with ``z ~ N(0, I)`` and
    every layer conditioned on the (standardized) input. The distribution returned by
    ``flow(x)`` has batch shape ``x.shape[:-1]``; with ``y_dim == 1`` its event shape is ``()``
    (scalar targets of shape ``(N,)``, like the
    :class:`~bayesdl.distributions.MixtureDensityNetwork`), otherwise ``(y_dim,)``.

    Arguments:
        y_dim: Dimension of the targets.
        x_dim: Dimension of the inputs (the context).
        family: One of :data:`CONDITIONAL_FAMILIES`.
        num_layers: Number of learned transforms.
        hidden: Hidden widths of each layer's conditioner network.
        count_bins: Bins of the rational-quadratic splines.
        bound: The splines act on ``[-bound, bound]`` (standardized units).
        order: Order of the splines, one of :data:`SPLINE_ORDERS`.
        activation: Nonlinearity of the conditioner networks, a name of
            :data:`bayesdl.nn.ACTIVATIONS`. The default ``"relu"`` is Pyro's; a smooth one such
            as ``"tanh"`` (that of :class:`~bayesdl.distributions.MixtureDensityNetwork`) makes
            the spline knots smooth functions of ``x``, which generalised better from few
            points on Bishop's flipped problem. ``"umnn"`` accepts only ``"relu"`` (its
            conditioner is built by :class:`~bayesdl.distributions.transforms.ConditionalUMNN`).
        **kwargs: Extra keyword arguments of the conditional UMNN transform (``"umnn"`` only).

    Raises:
        TypeError: ``activation`` is not a string, or extra keyword arguments for a family
            other than ``"umnn"``.
        ValueError: A bad size, an unknown ``family``, ``order`` or ``activation``, or an
            ``activation`` other than ``"relu"`` with ``"umnn"``.

    Example:
        >>> flow = ConditionalFlow(1, 1, "spline", num_layers=2, hidden=(16,))
        >>> d = flow(torch.zeros(5, 1))
        >>> d.batch_shape, d.sample().shape, d.log_prob(torch.zeros(5)).shape
        (torch.Size([5]), torch.Size([5]), torch.Size([5]))

    References:
        Winkler, C., Worrall, D., Hoogeboom, E., & Welling, M. (2019). Learning likelihoods with
        conditional normalizing flows. arXiv:1912.00042.

        Durkan, C., Bekasov, A., Murray, I., & Papamakarios, G. (2019). Neural spline flows.
        NeurIPS.

        Papamakarios, G., Pavlakou, T., & Murray, I. (2017). Masked autoregressive flow for
        density estimation. NeurIPS.

        Dinh, L., Sohl-Dickstein, J., & Bengio, S. (2017). Density estimation using Real NVP.
        ICLR.

        Papamakarios, G., Nalisnick, E., Rezende, D. J., Mohamed, S., & Lakshminarayanan, B.
        (2021). Normalizing flows for probabilistic modeling and inference. JMLR, 22(57), 1-64.
    """

    def __init__(
        self,
        y_dim: int,
        x_dim: int,
        family: str = "spline",
        *,
        num_layers: int = 4,
        hidden: Sequence[int] | int = (64, 64),
        count_bins: int = 8,
        bound: float = 3.0,
        order: str = "quadratic",
        activation: str = "relu",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_positive("y_dim", y_dim, integer=True)
        check_positive("x_dim", x_dim, integer=True)
        hidden = _check_hidden(hidden)
        self._check_common(
            y_dim, family, CONDITIONAL_FAMILIES, num_layers, count_bins, bound, order
        )
        if kwargs and family != "umnn":
            raise TypeError(f"unexpected keyword arguments for family={family!r}: {list(kwargs)}")
        if not isinstance(activation, str):
            raise TypeError(f"activation must be a string, got {type(activation).__name__}")
        check_choice("activation", activation, ACTIVATIONS)
        if family == "umnn" and activation != "relu":
            raise ValueError(
                f"activation must be 'relu' for family='umnn' (its conditioner is fixed), "
                f"got {activation!r}"
            )
        self.y_dim = y_dim
        self.x_dim = x_dim
        self.family = family
        self.num_layers = num_layers
        self.activation = activation
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            act = make_activation(activation)
            if family == "spline":
                layer = _conditional_spline(y_dim, x_dim, hidden, count_bins, bound, order, act)
            elif family == "spline_ar":
                layer = _conditional_spline_autoregressive(
                    y_dim, x_dim, hidden, count_bins, bound, order, act
                )
            elif family == "maf":
                arn = ConditionalAutoRegressiveNN(y_dim, x_dim, hidden, nonlinearity=act)
                layer = T.ConditionalAffineAutoregressive(arn)
            elif family == "realnvp":
                layer = _conditional_affine_coupling(y_dim, x_dim, hidden, act)
            else:
                layer = ConditionalUMNN(y_dim, x_dim, hidden=hidden, **kwargs)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.register_buffer("loc", torch.zeros(y_dim))
        self.register_buffer("scale", torch.ones(y_dim))
        self.register_buffer("x_loc", torch.zeros(x_dim))
        self.register_buffer("x_scale", torch.ones(x_dim))
        self.register_buffer("permutation", torch.arange(y_dim - 1, -1, -1))

    def extra_repr(self) -> str:
        return (
            f"y_dim={self.y_dim}, x_dim={self.x_dim}, family={self.family!r}, "
            f"num_layers={self.num_layers}, activation={self.activation!r}"
        )

    @property
    def scalar(self) -> bool:
        """True when the targets are scalars (``y_dim == 1``, event shape ``()``)."""
        return self.y_dim == 1

    def transforms(self, x: Tensor) -> list[Any]:
        """The transforms from the base to ``y``, conditioned on ``x`` (freshly built).

        Arguments:
            x: Inputs of shape ``(..., x_dim)``.
        """
        _check_rows("x", x, self.x_dim)
        context = (x - self.x_loc) / self.x_scale
        out: list[Any] = []
        for k, layer in enumerate(self.layers):
            if k > 0 and self.y_dim > 1:
                out.append(T.Permute(self.permutation))
            conditioned = layer.condition(context)
            out.append(conditioned.inv if self.family in _DENSITY_DIRECTION else conditioned)
        out.append(self._affine_out())
        if self.scalar:
            out.append(T.ReshapeTransform((1,), ()))
        return out

    def forward(self, x: Tensor) -> dist.TransformedDistribution:
        """The conditional distribution ``p(y | x)`` with batch shape ``x.shape[:-1]``.

        Arguments:
            x: Inputs of shape ``(N, x_dim)``.

        Returns:
            A Pyro ``TransformedDistribution`` over ``y`` (event shape ``()`` when
            ``y_dim == 1``, else ``(y_dim,)``), built afresh on every call.
        """
        transforms = self.transforms(x)
        shape = (*x.shape[:-1], self.y_dim)
        base = dist.Normal(
            torch.zeros(shape, dtype=self.loc.dtype, device=self.loc.device), 1.0
        ).to_event(1)
        return dist.TransformedDistribution(base, transforms)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(y | x)`` per point (``y`` of shape ``(N,)`` when ``y_dim == 1``)."""
        return self(x).log_prob(y)

    @torch.no_grad()
    def initialize(self, y: Tensor, x: Tensor | None = None) -> ConditionalFlow:
        """Standardize targets (and inputs) with the mean and standard deviation of the data.

        Arguments:
            y: Training targets, shape ``(N,)`` when ``y_dim == 1`` or ``(N, y_dim)``.
            x: Training inputs of shape ``(N, x_dim)`` (optional).

        Returns:
            ``self``, for chaining.
        """
        check_tensor("y", y)
        y2 = y.unsqueeze(-1) if (self.scalar and y.ndim == 1) else y
        _check_rows("y", y2, self.y_dim)
        loc, scale = _standardizer(y2, "y")
        self.loc.copy_(loc)
        self.scale.copy_(scale)
        if x is not None:
            _check_rows("x", x, self.x_dim)
            x_loc, x_scale = _standardizer(x, "x")
            self.x_loc.copy_(x_loc)
            self.x_scale.copy_(x_scale)
        return self

    def model(self, name: str = "conditional_flow") -> Callable[..., None]:
        """The Pyro program ``y_i ~ p(y | x_i)`` (site ``"obs"`` in ``plate("data")``).

        ``bayesdl.fit(flow.model(), None, x, y)`` fits it by maximum likelihood, as
        ``mdn.model()`` does for a mixture density network. With ``y=None`` the model samples.

        Arguments:
            name: Name of the module in Pyro's param store.

        Returns:
            A callable ``model(x, y=None)``.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")

        def conditional_flow_model(x: Tensor, y: Tensor | None = None) -> Tensor:
            pyro.module(name, self)
            with pyro.plate("data", x.shape[0]):
                return pyro.sample("obs", self(x), obs=y)

        return conditional_flow_model
