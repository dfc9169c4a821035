"""The potential energy of an MLP-shaped BNN and its gradient by hand-written backpropagation.

HMC needs ``U(z)`` and ``grad U(z)`` at every leapfrog step. For a small network the autograd
engine's bookkeeping (recording the graph, then walking it) costs several times the arithmetic.
For the common case, an ``nn.Sequential`` of ``Linear`` layers and elementwise activations with a
Normal or Laplace prior and a Gaussian or Categorical likelihood, both are a short chain of dense
operations that :func:`analytic_potential` writes out: the forward pass keeps each layer's
activations, and the backward pass is the textbook recursion ``delta_{l-1} = (delta_l W_l) *
act'(a_{l-1})``, ``dU/dW_l = delta_l^T a_{l-1}`` (Rumelhart, Hinton & Williams, 1986). The result
is traceable by ``torch.jit.trace`` as one graph with no autograd inside.

Any model outside that set gets ``None`` and the caller keeps the autograd potential.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from bayesdl.likelihoods import Categorical, Heteroscedastic, Homoscedastic
from bayesdl.nn import _Erf, _Step
from bayesdl.priors import Prior

__all__ = ["analytic_potential"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

#: ``(U, dU/dz)`` from the flat unconstrained vector ``z``.
ValueAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]


def _activation_grad(module: nn.Module) -> Callable[[Tensor, Tensor], Tensor] | None:
    """``act'`` as a function of (pre-activation, activation), for the activations we know."""
    if isinstance(module, nn.Tanh):
        return lambda pre, out: 1.0 - out * out
    if isinstance(module, nn.Sigmoid):
        return lambda pre, out: out * (1.0 - out)
    if isinstance(module, nn.ReLU):
        return lambda pre, out: (pre > 0).to(pre.dtype)
    if isinstance(module, _Erf):
        return lambda pre, out: _TWO_OVER_SQRT_PI * torch.exp(-pre * pre)
    if isinstance(module, _Step):  # zero almost everywhere
        return lambda pre, out: torch.zeros_like(pre)
    if isinstance(module, nn.Identity):
        return lambda pre, out: torch.ones_like(pre)
    return None


def _sigma_term(prior: dist.Distribution) -> Callable[[Tensor], tuple[Tensor, Tensor]] | None:
    """``-log p(sigma = e^u) - u`` (the prior on the noise scale plus the log-Jacobian of
    ``sigma = exp(u)``) and its derivative in ``u``, in closed form where we have one."""
    base = prior
    if isinstance(base, dist.LogNormal) and base.batch_shape == ():
        m, s = base.loc, base.scale
        const = torch.log(s) + _HALF_LOG_2PI
        return lambda u: (0.5 * ((u - m) / s).square() + const, (u - m) / s.square())
    if isinstance(base, dist.HalfNormal) and base.batch_shape == ():
        s = base.scale
        const = torch.log(s) + _HALF_LOG_2PI - math.log(2.0)
        # p(sigma) = 2 N(sigma; 0, s); -log p - u = sigma^2/(2 s^2) + const - u
        return lambda u: (
            0.5 * (u.exp() / s).square() + const - u,
            (u.exp() / s).square() - 1.0,
        )
    if isinstance(base, dist.Exponential) and base.batch_shape == ():
        rate = base.rate
        return lambda u: (rate * u.exp() - torch.log(rate) - u, rate * u.exp() - 1.0)
    return None


def analytic_potential(potential: object) -> ValueAndGrad | None:
    """A hand-differentiated ``z -> (U(z), dU/dz)`` for the model behind a
    :class:`~bayesdl.inference.mcmc.FlatPotential`, or ``None`` when the model is not one this
    module can differentiate by hand (then the caller keeps autograd).

    Supported: a ``BNN`` whose network is an ``nn.Sequential`` of ``nn.Linear`` layers and
    ``Tanh``/``Sigmoid``/``ReLU``/``erf``/step/``Identity`` activations, any subset of its
    parameters Bayesian with a Normal (the package's ``Prior("normal")``, fan-in scaled or not)
    or Laplace prior, and a ``Homoscedastic`` (fixed, learned-point or with a LogNormal,
    HalfNormal or Exponential prior on sigma), ``Heteroscedastic`` or ``Categorical``
    likelihood.
    """
    model = potential.model  # type: ignore[attr-defined]
    x: Tensor = potential.x  # type: ignore[attr-defined]
    y: Tensor = potential.y  # type: ignore[attr-defined]
    if not model.is_mlp or not isinstance(model.prior, Prior):
        return None
    if any(name not in potential.real for name in potential.weight_priors):  # type: ignore[attr-defined]
        return None
    laplace = model.prior.family == "laplace"
    weight_scale = potential._weight_scale  # type: ignore[attr-defined]
    if laplace:
        params = dict(model.net.named_parameters())
        weight_scale = torch.cat(
            [
                torch.full(
                    (params[n].numel(),),
                    model.prior.scale_for(params[n], n),
                    dtype=x.dtype,
                    device=x.device,
                )
                for n in model.bayesian_names
            ]
        )
    if weight_scale is None:
        return None
    weight_const = (
        weight_scale.log().sum()
        + (math.log(2.0) if laplace else _HALF_LOG_2PI) * weight_scale.numel()
    )

    # The network: (kind, name or derivative) per child, in order.
    layers: list[tuple[str, object]] = []
    for name, module in model.net.named_children():
        if isinstance(module, nn.Linear):
            layers.append(("linear", (name, module)))
        else:
            derivative = _activation_grad(module)
            if derivative is None:
                return None
            layers.append(("act", (module, derivative)))

    likelihood = model.likelihood
    sigma_prior = getattr(likelihood, "prior", None)
    sigma_term = None
    if isinstance(likelihood, Homoscedastic):
        if sigma_prior is not None:
            sigma_term = _sigma_term(sigma_prior)
            if sigma_term is None:
                return None
        if tuple(potential.global_priors) not in ((), ("sigma",)):  # type: ignore[attr-defined]
            return None
    elif isinstance(likelihood, Heteroscedastic | Categorical):
        if potential.global_priors:  # type: ignore[attr-defined]
            return None
    else:
        return None

    bayesian = set(model.bayesian_names)
    sizes = {n: p.numel() for n, p in model.net.named_parameters()}
    shapes = {n: p.shape for n, p in model.net.named_parameters()}
    # Offsets of each Bayesian parameter inside z (network order, as FlatPotential lays it out).
    offsets: dict[str, tuple[int, int]] = {}
    start = 0
    for n in model.bayesian_names:
        offsets[n] = (start, start + sizes[n])
        start += sizes[n]
    num_weights = start
    n_data = x.shape[0]
    if isinstance(likelihood, Categorical):
        onehot = torch.nn.functional.one_hot(y.long(), likelihood.num_classes).to(x.dtype)
    else:
        target = y.reshape(n_data).to(x.dtype)
    fixed_log_sigma = (
        likelihood.log_sigma.detach().to(x)
        if isinstance(likelihood, Homoscedastic) and sigma_prior is None
        else None
    )
    min_scale = getattr(likelihood, "min_scale", 0.0)
    # Does any layer at or below index i hold a Bayesian parameter? (Backprop can stop early.)
    needs_delta = []
    seen = False
    for kind, item in layers:
        if kind == "linear":
            name = item[0]  # type: ignore[index]
            seen = seen or f"{name}.weight" in bayesian or f"{name}.bias" in bayesian
        needs_delta.append(seen)

    # Point-estimate parameters are constants of the potential; detached here, once, because a
    # trace may not capture a tensor that requires grad.
    constants = {n: p.detach().to(x) for n, p in model.net.named_parameters() if n not in offsets}

    def value_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
        # z is (dim,) for one chain or (chains, dim) for several: every sum over data points or
        # parameters runs over the trailing dimensions, so U is () or (chains,).
        batch = z.shape[:-1]
        w = z[..., :num_weights]

        def param(name: str, module_value: Tensor | None) -> Tensor | None:
            if name in offsets:
                a, b = offsets[name]
                return z[..., a:b].reshape(batch + shapes[name])
            return None if module_value is None else constants[name]

        # Forward, keeping what the backward pass needs.
        h = x
        saved: list[tuple[Tensor, Tensor]] = []
        acts: list[tuple[Tensor, Tensor]] = []
        for kind, item in layers:
            if kind == "linear":
                name, module = item  # type: ignore[misc]
                weight = param(f"{name}.weight", module.weight)
                bias = param(f"{name}.bias", module.bias)
                saved.append((h, weight))  # type: ignore[arg-type]
                if weight.ndim == 2 and (bias is None or bias.ndim == 1):  # type: ignore[union-attr]
                    h = torch.nn.functional.linear(h, weight, bias)
                else:  # per-chain weights (chains, out, in): batched matmul
                    h = torch.matmul(h, weight.transpose(-1, -2))  # type: ignore[union-attr]
                    if bias is not None:
                        h = h + bias.unsqueeze(-2)
            else:
                module, _ = item  # type: ignore[misc]
                pre = h
                h = module(pre)
                acts.append((pre, h))
        out = h  # (N, K) or (chains, N, K)

        # Likelihood: U_lik and dU_lik/d(output).
        grads_global: list[Tensor] = []
        if isinstance(likelihood, Categorical):
            log_p = torch.log_softmax(out, dim=-1)
            u = -(log_p * onehot).sum((-2, -1))
            delta = log_p.exp() - onehot
        elif isinstance(likelihood, Heteroscedastic):
            mu, raw = out[..., 0], out[..., 1]
            scale = torch.nn.functional.softplus(raw) + min_scale
            r = (target - mu) / scale
            u = 0.5 * r.square().sum(-1) + scale.log().sum(-1) + n_data * _HALF_LOG_2PI
            d_mu = -r / scale
            d_scale = (1.0 - r.square()) / scale
            delta = torch.stack([d_mu, d_scale * torch.sigmoid(raw)], dim=-1)
        else:
            log_sigma = z[..., num_weights] if fixed_log_sigma is None else fixed_log_sigma
            inv_sigma = torch.exp(-log_sigma).unsqueeze(-1)
            r = (target - out[..., 0]) * inv_sigma
            rr = r.square().sum(-1)
            u = 0.5 * rr + n_data * (log_sigma + _HALF_LOG_2PI)
            delta = (-r * inv_sigma).unsqueeze(-1)
            if sigma_term is not None:
                prior_u, prior_g = sigma_term(log_sigma)
                u = u + prior_u
                grads_global.append((n_data - rr + prior_g).unsqueeze(-1))

        # Prior on the weights.
        if laplace:
            u = u + (w.abs() / weight_scale).sum(-1) + weight_const
            prior_grad = torch.sign(w) / weight_scale
        else:
            u = u + 0.5 * (w / weight_scale).square().sum(-1) + weight_const
            prior_grad = w / weight_scale.square()

        # Backward through the layers, last to first.
        grads: dict[str, Tensor] = {}
        act_index = len(acts)
        lin_index = len(saved)
        for i in range(len(layers) - 1, -1, -1):
            kind, item = layers[i]
            if kind == "linear":
                lin_index -= 1
                name = item[0]  # type: ignore[index]
                h_in, weight = saved[lin_index]
                if f"{name}.weight" in offsets:
                    grads[f"{name}.weight"] = torch.matmul(delta.transpose(-1, -2), h_in)
                if f"{name}.bias" in offsets:
                    grads[f"{name}.bias"] = delta.sum(-2)
                if i == 0 or not needs_delta[i - 1]:
                    break
                delta = torch.matmul(delta, weight)
            else:
                act_index -= 1
                _, derivative = item  # type: ignore[misc]
                pre, post = acts[act_index]
                delta = delta * derivative(pre, post)
        pieces = [grads[n].reshape((*batch, -1)) for n in model.bayesian_names]
        grad = torch.cat(pieces + grads_global, dim=-1)
        if grads_global:
            prior_grad = torch.cat([prior_grad, prior_grad.new_zeros((*batch, 1))], dim=-1)
        return u, grad + prior_grad

    return value_and_grad
