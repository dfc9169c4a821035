"""Pyro programs built from a plain torch network, a prior over its weights and a likelihood.

:class:`BNN` turns any ``nn.Module`` into a Pyro model ``model(x, y=None)``: the selected
parameters become sample sites with explicit priors, the others stay point estimates in Pyro's
param store, and the likelihood supplies the observation site inside ``pyro.plate("data", N)``.
The network itself is never rewritten: the sampled weights are passed through
:func:`torch.func.functional_call`, so the same module runs in ordinary torch code, in the Pyro
model, and - vectorised with :func:`torch.vmap` - over a whole set of posterior samples.

The lecture's Bayesian neural network: a prior ``p(w)``, a likelihood ``p(y | x, w)``, the
posterior ``p(w | d)`` and the posterior predictive
``p(y | x, d) = integral p(y | x, w) p(w | d) dw``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.params.param_store import param_with_module_name
from torch import Tensor, nn
from torch.func import functional_call

from bayesdl._validation import check_choice
from bayesdl.likelihoods import Likelihood
from bayesdl.priors import Prior, PriorLike, _FromDistribution, resolve_prior

__all__ = ["BNN", "select_parameters"]

Selection = str | Sequence[str] | Callable[[str, Tensor], bool]


def select_parameters(net: nn.Module, bayesian: Selection) -> list[str]:
    """Names of the parameters of ``net`` that are to be Bayesian.

    Arguments:
        net: The network.
        bayesian: ``"all"``, ``"none"``, ``"last"`` (the parameters of the last module that owns
            any, e.g. the output layer of an MLP: "last-layer Bayesian"), an explicit list of
            parameter names, or a predicate ``(name, param) -> bool``.
    """
    names = [n for n, _ in net.named_parameters()]
    if isinstance(bayesian, str):
        check_choice("bayesian", bayesian, ("all", "none", "last"))
        if bayesian == "all":
            return names
        if bayesian == "none":
            return []
        owners = [m for m, mod in net.named_modules() if any(True for _ in mod.parameters(False))]
        if not owners:
            return []
        prefix = owners[-1]
        return [n for n in names if n.rpartition(".")[0] == prefix]
    if callable(bayesian):
        return [n for n, p in net.named_parameters() if bayesian(n, p)]
    chosen = list(bayesian)
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ValueError(f"bayesian names unknown parameters {unknown}; the network has {names}")
    return [n for n in names if n in chosen]


class BNN(nn.Module):
    """A neural network as a Pyro program: ``w ~ p(w)``, ``y_i ~ p(y | x_i, w)``.

    Sample sites: ``"net.<param>"`` for every Bayesian parameter (e.g. ``"net.0.weight"``), the
    likelihood's own globals (``"sigma"`` for a homoscedastic noise with a prior), and ``"obs"``
    inside ``pyro.plate("data", N)``. So ``pyro.infer.SVI``, ``MCMC(NUTS(model))``, ``Predictive``
    and :func:`bayesdl.fit` (with minibatches) take it unchanged. Vectorised ELBO particles
    (``vectorize_particles=True``) work for MLP-like networks (a ``Sequential`` of ``Linear``
    layers and parameter-free modules), whose weights broadcast over any leading dimensions;
    other networks are evaluated with ``torch.vmap`` over one leading sample dimension, so use
    ``vectorize_particles=False`` with them.

    With ``prior=None`` (or ``bayesian="none"``) no weight is a sample site: fitting with no
    guide is then maximum likelihood, the point-estimate networks of the aleatoric part of the
    lecture.

    Arguments:
        net: Any torch module mapping inputs ``(N, ...)`` to outputs ``(N, K)`` with
            ``K = likelihood.output_size()``.
        likelihood: A :class:`~bayesdl.likelihoods.Likelihood`.
        prior: Prior over the Bayesian weights (see :func:`bayesdl.priors.resolve_prior`), or
            ``None`` for point estimates.
        bayesian: Which parameters are Bayesian (see :func:`select_parameters`).
        flat: Put all Bayesian weights in one vector site ``"weights"`` instead of one site per
            parameter tensor. The model is the same; Pyro's per-site bookkeeping (in the model,
            the guide and the ELBO) shrinks to one site, about halving an SVI step of a small
            network (``make bench``). Needs a factorised prior.
        name: Prefix of the point-estimate parameters in Pyro's param store.

    Example:
        >>> from bayesdl.nn import MLP
        >>> from bayesdl.likelihoods import Homoscedastic
        >>> model = BNN(MLP(1, 1, hidden=(10,)), Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)))
        >>> sorted(model.latent_sites)
        ['net.0.bias', 'net.0.weight', 'net.2.bias', 'net.2.weight', 'sigma']

    References:
        Neal, R. M. (1995). Bayesian learning for neural networks. PhD thesis, University of
        Toronto.

        Blundell, C., Cornebise, J., Kavukcuoglu, K., & Wierstra, D. (2015). Weight uncertainty in
        neural networks. ICML.
    """

    def __init__(
        self,
        net: nn.Module,
        likelihood: Likelihood,
        prior: PriorLike | None = "normal",
        *,
        bayesian: Selection = "all",
        flat: bool = False,
        name: str = "bnn",
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if not isinstance(likelihood, Likelihood):
            raise TypeError(
                f"likelihood must be a bayesdl.likelihoods.Likelihood, got {type(likelihood).__name__}"
            )
        if "$$$" in name:
            raise ValueError(f"name must not contain '$$$', got {name!r}")
        self.net = net
        self.likelihood = likelihood
        self.name = name
        self.prior = None if prior is None else resolve_prior(prior)
        self.bayesian_names: tuple[str, ...] = (
            () if prior is None else tuple(select_parameters(net, bayesian))
        )
        if isinstance(self.prior, Prior):
            self.prior = self.prior.bind(self.bayesian_names)
        bayes = {f"net.{n}" for n in self.bayesian_names}
        self._point_names = tuple(n for n, _ in self.named_parameters() if n not in bayes)
        params = dict(net.named_parameters())
        self._bayesian_shapes = tuple(params[n].shape for n in self.bayesian_names)
        #: An MLP-like network (a Sequential of Linear layers and parameter-free modules) runs
        #: through :meth:`_mlp_output`: traceable, and batched over samples without vmap.
        self.is_mlp = isinstance(net, nn.Sequential) and all(
            isinstance(m, nn.Linear) or not any(True for _ in m.parameters())
            for m in net.children()
        )
        self.flat = bool(flat) and bool(self.bayesian_names)
        if self.flat and not isinstance(self.prior, (Prior, _FromDistribution)):
            raise ValueError(
                "flat=True needs a factorised prior (a Prior, a prior name or a scalar "
                f"Distribution), got {self.prior!r}"
            )
        self._prior_cache: dict[tuple[torch.device, torch.dtype], dict[str, dist.Distribution]] = {}

    # -- structure -------------------------------------------------------------------------

    @property
    def task(self) -> str:
        """``"regression"`` or ``"classification"``, from the likelihood."""
        return self.likelihood.task

    @property
    def weight_sites(self) -> tuple[str, ...]:
        """Names of the sample sites of the Bayesian weights, in network order (the single site
        ``"weights"`` with ``flat=True``)."""
        if self.flat:
            return ("weights",)
        return tuple(f"net.{n}" for n in self.bayesian_names)

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """All latent sample sites: Bayesian weights and the likelihood's global sites."""
        extra = ("sigma",) if getattr(self.likelihood, "prior", None) is not None else ()
        return self.weight_sites + extra

    def initial_values(self) -> dict[str, Tensor]:
        """The network's current values of its Bayesian weights, keyed by site name (to start
        a guide or a sampler from a torch initialisation)."""
        return self.site_values(dict(self.net.named_parameters()))

    def site_values(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weight-site values from network parameters ``{name: tensor}`` (detached copies)."""
        if self.flat:
            return {
                "weights": torch.cat([params[n].detach().reshape(-1) for n in self.bayesian_names])
            }
        return {f"net.{n}": params[n].detach().clone() for n in self.bayesian_names}

    def _unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Network-parameter views ``{name: (..., *shape)}`` of flat weights ``(..., D)``."""
        shapes = self._bayesian_shapes  # cached: reading a parameter's shape breaks jit tracing
        sizes = [shape.numel() for shape in shapes]
        batch = flat.shape[:-1]
        return {
            n: piece.reshape(batch + shape)
            for n, piece, shape in zip(
                self.bayesian_names, flat.split(sizes, dim=-1), shapes, strict=True
            )
        }

    def priors(self) -> dict[str, dist.Distribution]:
        """The prior distribution of every Bayesian weight site (cached per device and dtype)."""
        params = dict(self.net.named_parameters())
        if not params:
            return {}
        ref = next(iter(params.values()))
        key = (ref.device, ref.dtype)
        if key not in self._prior_cache:
            assert self.prior is not None or not self.bayesian_names
            if self.flat:
                per_param = {"weights": self._flat_prior(params)}
            else:
                per_param = {f"net.{n}": self.prior(n, params[n]) for n in self.bayesian_names}  # type: ignore[misc]
            self._prior_cache = {key: per_param}
        return self._prior_cache[key]

    def _flat_prior(self, params: dict[str, Tensor]) -> dist.Distribution:
        """The independent per-weight priors of all Bayesian parameters as one vector site."""
        ref = params[self.bayesian_names[0]]
        size = sum(params[n].numel() for n in self.bayesian_names)
        if isinstance(self.prior, _FromDistribution):
            return self.prior.base.expand((size,)).to_event(1)
        assert isinstance(self.prior, Prior)
        scale = torch.cat(
            [
                torch.full(
                    (params[n].numel(),),
                    self.prior.scale_for(params[n], n),
                    dtype=ref.dtype,
                    device=ref.device,
                )
                for n in self.bayesian_names
            ]
        )
        loc = torch.zeros_like(scale)
        base = (
            dist.Normal(loc, scale) if self.prior.family == "normal" else dist.Laplace(loc, scale)
        )
        return base.to_event(1)

    # -- the Pyro program ------------------------------------------------------------------

    def _register_point_parameters(self) -> None:
        for path in self._point_names:
            module_path, _, leaf = path.rpartition(".")
            owner = self.get_submodule(module_path) if module_path else self
            value = owner._parameters[leaf]
            full_name = param_with_module_name(self.name, path)
            stored = pyro.param(full_name, value)
            if stored is not value:
                if stored.shape != value.shape:
                    raise ValueError(
                        f"Pyro's param store already holds {full_name!r} with shape "
                        f"{tuple(stored.shape)}, but this model's parameter has shape "
                        f"{tuple(value.shape)}: call pyro.clear_param_store() or give this model "
                        "another name="
                    )
                # An existing store entry wins, as with pyro.module(update_module_params=True).
                owner._parameters[leaf] = stored  # type: ignore[assignment]

    def network_output(self, x: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        """The network's output with ``weights`` (site name -> value) substituted.

        Weights with a leading sample dimension ``S`` give outputs ``(S, N, K)``. An MLP-like
        network runs them as broadcasting matmuls, or, without autograd on many inputs, as a
        loop of plain forwards (the fastest form there); other networks through
        :func:`torch.vmap`.
        """
        if not weights:
            return self.net(x)
        if self.flat:
            local = self._unflatten(weights["weights"])
        else:
            local = {name[4:]: value for name, value in weights.items()}
        if self.is_mlp:
            batch = local[self.bayesian_names[0]].shape[: -len(self._bayesian_shapes[0])]
            if len(batch) == 1 and x.ndim == 2 and self.loops_over_samples(x.shape[0]):
                return self._mlp_output_per_sample(x, local, batch[0])
            output = self._mlp_output(x, local)
            if len(batch) >= 2 and batch[-1] == 1:
                # Inside Pyro's vectorised particle plate the weights carry a singleton in the
                # data plate's position, (P, 1, *shape): drop it so outputs are (P, N, K).
                output = output.squeeze(-3)
            return output
        first = self.bayesian_names[0]
        param_ndim = dict(self.net.named_parameters())[first].ndim
        if local[first].ndim == param_ndim:
            return functional_call(self.net, local, (x,), strict=False)
        return torch.vmap(lambda w: functional_call(self.net, w, (x,), strict=False))(local)

    #: Below this many input rows, one batched matmul over all samples beats a loop of plain
    #: forwards (the per-call overhead dominates); above it the loop wins (``make bench``).
    LOOP_MIN_ROWS = 128

    def loops_over_samples(self, rows: int) -> bool:
        """Whether :meth:`network_output` runs posterior samples as a loop of plain forwards
        (no autograd, an MLP-like network, at least :attr:`LOOP_MIN_ROWS` inputs)."""
        return self.is_mlp and not torch.is_grad_enabled() and rows >= self.LOOP_MIN_ROWS

    def _mlp_output_per_sample(self, x: Tensor, params: dict[str, Tensor], num: int) -> Tensor:
        """``(S, N, K)`` outputs as ``S`` plain forwards written into one buffer.

        Each forward is one fused ``addmm`` per layer on that sample's own weights, with the
        activation in place: the batched matmul over all samples re-reads every sample's
        weights for each chunk of rows, and for wide layers that traffic and its unfused bias
        add cost more than the loop's per-call overhead (``benchmarks/README.md``)."""
        layers = []
        for name, module in self.net.named_children():
            if isinstance(module, nn.Linear):
                weight = params.get(f"{name}.weight", module.weight)
                bias = params.get(f"{name}.bias", module.bias)
                layers.append((module, weight, bias))
            else:
                layers.append((module, None, None))
        out: Tensor | None = None
        for s in range(num):
            h = x
            for module, weight, bias in layers:
                if weight is not None:
                    w = weight[s] if weight.ndim == 3 else weight
                    b = bias[s] if bias is not None and bias.ndim == 2 else bias
                    h = F.linear(h, w, b)
                elif h is not x and isinstance(module, nn.ReLU):
                    h = h.relu_()
                elif h is not x and isinstance(module, nn.Tanh):
                    h = h.tanh_()
                else:
                    h = module(h)
            if out is None:
                out = h.new_empty((num, *h.shape))
            out[s] = h
        assert out is not None
        return out

    def _mlp_output(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """An MLP's output with ``params`` (network-parameter names) substituted.

        Weights of shape ``(S, out, in)`` give ``(S, N, out)`` by broadcasting matmuls: one
        GEMM per layer and sample, as fast as a loop of ``S`` plain forwards, where ``vmap``
        over ``functional_call`` materialises unfused bias and activation passes. Without
        autograd the bias add and known activations run in place. Plain layer calls also keep
        the function traceable by ``torch.jit.trace``.
        """
        grad = torch.is_grad_enabled()
        h = x
        for name, module in self.net.named_children():
            inplace = not grad and h is not x  # never overwrite the caller's input
            if isinstance(module, nn.Linear):
                weight = params.get(f"{name}.weight", module.weight)
                bias = params.get(f"{name}.bias", module.bias)
                if weight.ndim == 2 and (bias is None or bias.ndim == 1):
                    h = F.linear(h, weight, bias)
                    continue
                h = torch.matmul(h, weight.transpose(-1, -2))
                if bias is not None:
                    bias = bias.unsqueeze(-2)
                    h = h.add_(bias) if inplace else h + bias
            elif inplace and isinstance(module, nn.ReLU):
                h = h.relu_()
            elif inplace and isinstance(module, nn.Tanh):
                h = h.tanh_()
            else:
                h = module(h)
        return h

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Run the Pyro program; returns the observed (or sampled) targets."""
        self._register_point_parameters()
        weights = {site: pyro.sample(site, prior) for site, prior in self.priors().items()}
        output = self.network_output(x, weights)
        globals_ = self.likelihood.sample_globals()
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", self.likelihood(output, **globals_), obs=y)

    def conditional(self, x: Tensor) -> dist.Distribution:
        """``p(y | x, w)`` at the module's current weights (the fitted network of a
        point-estimate model; for a Bayesian model, use :func:`bayesdl.inference.predict`)."""
        return self.likelihood(self.net(x))
