r"""Covariance functions of infinitely wide networks (NNGP kernels) for ``pyro.contrib.gp``.

A one-hidden-layer network under Neal's prior (:class:`bayesdl.priors.NealPrior`),
``f(x) = b + sum_j v_j h_j(x)``, ``h_j(x) = act(a_j + u_j . x)``, tends as its width ``q`` grows to
a Gaussian process with covariance

.. math::

    K(x, x') = \sigma_b^2 + \omega_v^2 C(x, x'), \qquad C(x, x') = E[h(x) h(x')],

where the pre-activations ``z = a + u . x`` and ``z' = a + u . x'`` are jointly Gaussian with
``Cov(z, z') = sigma_a^2 + sigma_u^2 x . x'``. Each kernel here computes ``C`` for one activation:
in closed form for erf (Williams, 1997) and for step/ReLU-type units (Cho & Saul, 2009), by the
layer recursion for deep ReLU networks (Lee et al., 2018), and by fixed Monte Carlo features for
any activation (tanh has no closed form). The hyperparameters are Pyro parameters named as in the
lecture, positive, learnable, and can be given priors with ``kernel.<name> = PyroSample(...)``.
Every instance has its own names in Pyro's param store, so two kernels never share values.

References:
    Neal, R. M. (1995). Bayesian learning for neural networks. PhD thesis, University of Toronto.

    Williams, C. K. I. (1997). Computing with infinite networks. NeurIPS.

    Cho, Y., & Saul, L. K. (2009). Kernel methods for deep learning. NeurIPS.

    Lee, J., Bahri, Y., Novak, R., Schoenholz, S. S., Pennington, J., & Sohl-Dickstein, J. (2018).
    Deep neural networks as Gaussian processes. ICLR.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from pyro.contrib.gp.kernels import Kernel
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch import Tensor

from bayesdl._validation import check_choice, check_positive
from bayesdl.nn import ACTIVATIONS
from bayesdl.nn import activation as make_activation

__all__ = [
    "ArcCosineKernel",
    "DeepReLUKernel",
    "ErfKernel",
    "MonteCarloKernel",
    "NNGPKernel",
    "kernel_for",
]

# acos has an infinite derivative at +-1 (x = x'); clamping the cosine keeps gradients finite.
# The bias this leaves in C is O(sqrt(eps)) relative in float64 and O(1e-4) in float32.
_COS_EPS = {torch.float64: 1e-12, torch.float32: 1e-7}


def _check_inputs(kernel: Kernel, name: str, X: object) -> Tensor:
    """The kernel's active columns of ``X`` (``(N,)`` is read as ``(N, 1)``), checked."""
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if X.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (N, input_dim) or (N,), got {tuple(X.shape)}")
    if X.ndim == 2 and X.shape[1] <= max(kernel.active_dims):
        raise ValueError(
            f"{name} must have {kernel.input_dim} active columns {kernel.active_dims}, got "
            f"shape {tuple(X.shape)}"
        )
    X = kernel._slice_input(X)
    if X.shape[-1] != kernel.input_dim:
        raise ValueError(
            f"{name} must have {kernel.input_dim} active columns, got shape {tuple(X.shape)}"
        )
    return X


_instances = itertools.count()


def unique_pyro_name(module: torch.nn.Module, prefix: str) -> None:
    """Give a Pyro module (and its submodules) a name no other instance has.

    Pyro keeps a ``PyroParam``'s value in the global param store under the module's name, so two
    kernels named alike would silently share hyperparameters (the second would read the first's
    values, not its own arguments). A unique prefix keeps instances apart without
    ``pyro.clear_param_store()``.
    """
    module._pyro_set_supermodule(f"{prefix}_{next(_instances)}", module._pyro_context)  # type: ignore[operator]


def _positive(name: str, value: float) -> PyroParam:
    check_positive(name, value)
    return PyroParam(torch.tensor(float(value)), constraints.positive)


class NNGPKernel(Kernel):
    r"""Base class: ``K(x, x') = sigma_b^2 + omega_v^2 C(x, x')`` for one hidden layer.

    Subclasses implement :meth:`hidden_covariance`, ``C`` as a function of the pre-activation
    covariances ``S(x, x') = sigma_a^2 + sigma_u^2 x . x'``, ``S(x, x)`` and ``S(x', x')``.

    Arguments:
        input_dim: Number of input features.
        sigma_u: Prior standard deviation of the input-to-hidden weights.
        sigma_a: Prior standard deviation of the hidden biases.
        omega_v: Output scale (hidden-to-output standard deviation times ``sqrt(q)``).
        sigma_b: Prior standard deviation of the output bias.
        active_dims: Input columns the kernel reads (``pyro.contrib.gp`` convention).
    """

    def __init__(
        self,
        input_dim: int,
        sigma_u: float = 1.0,
        sigma_a: float = 1.0,
        omega_v: float = 1.0,
        sigma_b: float = 1.0,
        active_dims: list[int] | None = None,
    ) -> None:
        check_positive("input_dim", input_dim, integer=True)
        super().__init__(input_dim, active_dims)
        unique_pyro_name(self, type(self).__name__)
        self.sigma_u = _positive("sigma_u", sigma_u)
        self.sigma_a = _positive("sigma_a", sigma_a)
        self.omega_v = _positive("omega_v", omega_v)
        self.sigma_b = _positive("sigma_b", sigma_b)

    def hidden_covariance(self, s_xz: Tensor, s_xx: Tensor, s_zz: Tensor) -> Tensor:
        """``C = E[h(z) h(z')]`` for pre-activations with covariance ``[[s_xx, s_xz], [., s_zz]]``.

        ``s_xz`` has any shape; ``s_xx`` and ``s_zz`` broadcast against it.
        """
        raise NotImplementedError

    def pre_activation_covariance(self, X: Tensor, Z: Tensor | None = None) -> Tensor:
        """``S(x, z) = sigma_a^2 + sigma_u^2 x . z`` for all rows, shape ``(N, M)``."""
        X = self._inputs("X", X)
        Z = X if Z is None else self._inputs("Z", Z)
        return self.sigma_a.square() + self.sigma_u.square() * (X @ Z.T)

    def _inputs(self, name: str, X: Tensor) -> Tensor:
        return _check_inputs(self, name, X)

    def _diag_s(self, X: Tensor) -> Tensor:
        return self.sigma_a.square() + self.sigma_u.square() * X.square().sum(-1)

    def forward(self, X: Tensor, Z: Tensor | None = None, diag: bool = False) -> Tensor:
        X = self._inputs("X", X)
        s_xx = self._diag_s(X)
        if diag:
            c = self.hidden_covariance(s_xx, s_xx, s_xx)
            return self.sigma_b.square() + self.omega_v.square() * c
        Z = X if Z is None else self._inputs("Z", Z)
        s_zz = s_xx if Z is X else self._diag_s(Z)
        s_xz = self.sigma_a.square() + self.sigma_u.square() * (X @ Z.T)
        c = self.hidden_covariance(s_xz, s_xx[:, None], s_zz[None, :])
        return self.sigma_b.square() + self.omega_v.square() * c


class ErfKernel(NNGPKernel):
    r"""The infinite network of ``erf`` units (Williams, 1997):

    .. math::

        C(x, x') = \frac{2}{\pi} \arcsin
            \frac{2 S(x, x')}{\sqrt{(1 + 2 S(x, x))(1 + 2 S(x', x'))}}.

    ``erf`` is a sigmoid like ``tanh``; the two kernels are close for small weights.

    References:
        Williams, C. K. I. (1997). Computing with infinite networks. NeurIPS.
    """

    def hidden_covariance(self, s_xz: Tensor, s_xx: Tensor, s_zz: Tensor) -> Tensor:
        rho = 2 * s_xz / torch.sqrt((1 + 2 * s_xx) * (1 + 2 * s_zz))
        return (2 / math.pi) * torch.asin(rho.clamp(-1.0, 1.0))


class ArcCosineKernel(NNGPKernel):
    r"""The arc-cosine kernel of order ``n`` (Cho & Saul, 2009): units ``h(z) = 1[z > 0] z^n``.

    Order 0 is the Heaviside step, order 1 the ReLU, order 2 the squared ReLU. (As ``sigma_u``
    grows with ``sigma_a / sigma_u`` fixed, tanh units tend to ``sign(z) = 2 step(z) - 1``, Neal's
    step functions, whose kernel is ``1 - 2 theta / pi = 4 C_0 - 1``.)
    With ``cos(theta) = S(x, x') / sqrt(S(x, x) S(x', x'))``,

    .. math::

        C(x, x') = \frac{1}{2\pi} (S(x, x) S(x', x'))^{n/2} J_n(\theta),

    ``J_0 = pi - theta``, ``J_1 = sin(theta) + (pi - theta) cos(theta)``,
    ``J_2 = 3 sin(theta) cos(theta) + (pi - theta)(1 + 2 cos^2(theta))``. (Cho & Saul's ``k_n`` is
    twice this ``C``, for unit-variance weights.)

    Arguments:
        input_dim: Number of input features.
        order: 0, 1 or 2.
        **hyper: ``sigma_u``, ``sigma_a``, ``omega_v``, ``sigma_b``, ``active_dims`` as in
            :class:`NNGPKernel`.

    References:
        Cho, Y., & Saul, L. K. (2009). Kernel methods for deep learning. NeurIPS.
    """

    def __init__(self, input_dim: int, order: int = 1, **hyper: object) -> None:
        check_choice("order", order, (0, 1, 2))
        super().__init__(input_dim, **hyper)  # type: ignore[arg-type]
        self.order = order

    def hidden_covariance(self, s_xz: Tensor, s_xx: Tensor, s_zz: Tensor) -> Tensor:
        return _arc_cosine(self.order, s_xz, s_xx, s_zz)


def _arc_cosine(order: int, s_xz: Tensor, s_xx: Tensor, s_zz: Tensor) -> Tensor:
    norm = torch.sqrt(s_xx * s_zz)
    eps = _COS_EPS.get(s_xz.dtype, 1e-7)
    cos = (s_xz / norm).clamp(-1 + eps, 1 - eps)
    theta = torch.acos(cos)
    sin = torch.sqrt(1 - cos.square())
    if order == 0:
        j = math.pi - theta
    elif order == 1:
        j = sin + (math.pi - theta) * cos
    else:
        j = 3 * sin * cos + (math.pi - theta) * (1 + 2 * cos.square())
    return norm**order * j / (2 * math.pi)


class DeepReLUKernel(Kernel):
    r"""The NNGP kernel of a ReLU MLP with ``depth`` hidden layers (Lee et al., 2018).

    Weights of layer ``l`` are ``N(0, sigma_w^2 / fan_in)`` and biases ``N(0, sigma_b^2)``. The
    covariance of the pre-activations of layer ``l + 1`` follows from that of layer ``l``:

    .. math::

        K^0(x, x') = \sigma_b^2 + \sigma_w^2 \frac{x \cdot x'}{d}, \qquad
        K^{l+1}(x, x') = \sigma_b^2 + \frac{\sigma_w^2}{2\pi}
            \sqrt{K^l(x, x) K^l(x', x')} \, (\sin\theta^l + (\pi - \theta^l)\cos\theta^l),

    and the output's covariance is ``K^depth``. With ``depth=1`` it is
    :class:`ArcCosineKernel` of order 1 with ``sigma_u = sigma_w / sqrt(d)``, ``sigma_a = sigma_b``
    and ``omega_v = sigma_w``.

    Arguments:
        input_dim: Number of input features ``d``.
        depth: Number of hidden layers (at least 1).
        sigma_w: Weight scale (times ``1/sqrt(fan_in)``).
        sigma_b: Bias standard deviation, of every layer.
        active_dims: Input columns the kernel reads.

    References:
        Lee, J., Bahri, Y., Novak, R., Schoenholz, S. S., Pennington, J., & Sohl-Dickstein, J.
        (2018). Deep neural networks as Gaussian processes. ICLR.
    """

    def __init__(
        self,
        input_dim: int,
        depth: int = 2,
        sigma_w: float = math.sqrt(2.0),
        sigma_b: float = 0.1,
        active_dims: list[int] | None = None,
    ) -> None:
        check_positive("input_dim", input_dim, integer=True)
        check_positive("depth", depth, integer=True)
        super().__init__(input_dim, active_dims)
        unique_pyro_name(self, type(self).__name__)
        self.depth = int(depth)
        self.sigma_w = _positive("sigma_w", sigma_w)
        self.sigma_b = _positive("sigma_b", sigma_b)

    def forward(self, X: Tensor, Z: Tensor | None = None, diag: bool = False) -> Tensor:
        X = _check_inputs(self, "X", X)
        w2, b2 = self.sigma_w.square(), self.sigma_b.square()
        k_xx = b2 + w2 * X.square().sum(-1) / self.input_dim
        if diag:
            # On the diagonal theta = 0: K^{l+1}(x, x) = sigma_b^2 + sigma_w^2 K^l(x, x) / 2.
            for _ in range(self.depth):
                k_xx = b2 + w2 * k_xx / 2
            return k_xx
        Z = X if Z is None else _check_inputs(self, "Z", Z)
        k_zz = k_xx if Z is X else b2 + w2 * Z.square().sum(-1) / self.input_dim
        k_xz = b2 + w2 * (X @ Z.T) / self.input_dim
        for _ in range(self.depth):
            k_xz = b2 + w2 * _arc_cosine(1, k_xz, k_xx[:, None], k_zz[None, :])
            k_xx = b2 + w2 * k_xx / 2
            k_zz = b2 + w2 * k_zz / 2
        return k_xz


class MonteCarloKernel(NNGPKernel):
    r"""``C(x, x') = E[h(x) h(x')]`` for any activation, estimated with fixed random features.

    ``num_features`` hidden units are drawn once, as standard normal noise ``(e_a, e_u)``, and
    ``z = sigma_a e_a + sigma_u e_u . x`` is formed at every call, so the estimate is a smooth
    function of the hyperparameters (gradients reach them) and the same at every call. The kernel
    matrix is ``Phi Phi^T / num_features``, positive semi-definite by construction, with Monte Carlo
    error ``sd(h(x) h(x')) / sqrt(num_features)``. This is the kernel of one network of width
    ``num_features`` with its first layer frozen; tanh, whose kernel has no closed form, needs it.

    Arguments:
        input_dim: Number of input features.
        activation: A name in :data:`bayesdl.nn.ACTIVATIONS` or an elementwise callable.
        num_features: Number of random hidden units.
        seed: Seed of the random features.
        **hyper: ``sigma_u``, ``sigma_a``, ``omega_v``, ``sigma_b``, ``active_dims`` as in
            :class:`NNGPKernel`.
    """

    def __init__(
        self,
        input_dim: int,
        activation: str | Callable[[Tensor], Tensor] = "tanh",
        num_features: int = 4096,
        seed: int = 0,
        **hyper: object,
    ) -> None:
        super().__init__(input_dim, **hyper)  # type: ignore[arg-type]
        check_positive("num_features", num_features, integer=True)
        if isinstance(activation, str):
            check_choice("activation", activation, ACTIVATIONS)
            self.activation: Callable[[Tensor], Tensor] = make_activation(activation)
        elif callable(activation):
            self.activation = activation
        else:
            raise TypeError(
                f"activation must be a name in {list(ACTIVATIONS)} or a callable, "
                f"got {type(activation).__name__}"
            )
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("noise_u", torch.randn(input_dim, num_features, generator=gen))
        self.register_buffer("noise_a", torch.randn(num_features, generator=gen))
        self.num_features = int(num_features)

    def features(self, X: Tensor) -> Tensor:
        """Hidden-unit values ``h_j(x)`` of the frozen first layer, shape ``(N, num_features)``."""
        X = self._inputs("X", X)
        noise_u = self.noise_u.to(X)
        noise_a = self.noise_a.to(X)
        return self.activation(self.sigma_a * noise_a + self.sigma_u * (X @ noise_u))

    def forward(self, X: Tensor, Z: Tensor | None = None, diag: bool = False) -> Tensor:
        h_x = self.features(X)
        scale = self.omega_v.square() / self.num_features
        if diag:
            return self.sigma_b.square() + scale * h_x.square().sum(-1)
        h_z = h_x if Z is None else self.features(Z)
        return self.sigma_b.square() + scale * (h_x @ h_z.T)


#: Activation name -> closed-form kernel (the others use :class:`MonteCarloKernel`).
CLOSED_FORMS: dict[str, tuple[type[NNGPKernel], dict[str, int]]] = {
    "erf": (ErfKernel, {}),
    "step": (ArcCosineKernel, {"order": 0}),
    "relu": (ArcCosineKernel, {"order": 1}),
}


def kernel_for(
    activation: str,
    input_dim: int = 1,
    *,
    sigma_u: float = 1.0,
    sigma_a: float = 1.0,
    omega_v: float = 1.0,
    sigma_b: float = 1.0,
    num_features: int = 4096,
    seed: int = 0,
) -> NNGPKernel:
    """The infinite-width kernel of a one-hidden-layer network with this activation.

    Closed form for ``erf``, ``step`` and ``relu``; :class:`MonteCarloKernel` otherwise.
    """
    check_choice("activation", activation, ACTIVATIONS)
    hyper = {"sigma_u": sigma_u, "sigma_a": sigma_a, "omega_v": omega_v, "sigma_b": sigma_b}
    if activation in CLOSED_FORMS:
        cls, extra = CLOSED_FORMS[activation]
        return cls(input_dim, **extra, **hyper)  # type: ignore[arg-type]
    return MonteCarloKernel(input_dim, activation, num_features, seed, **hyper)
