"""Dropout as variational inference: MC, Gaussian and Concrete dropout as one Pyro autoguide.

The lecture's variational family for dropout: the weights are split per layer,
``omega = {W_1, ..., W_L}``, each matrix per input unit, ``W_i = [w_{i,1}, ..., w_{i,q_i}]``, and

    q(w_{i,k}; m_{i,k}) = p delta_0(w_{i,k}) + (1 - p) delta_{m_{i,k}}(w_{i,k}),

so a draw is ``W_i = M_i diag(z_i)`` with ``z_{i,k} ~ Bernoulli(1 - p)``: the columns of ``M_i``
(the weights leaving input unit ``k``) are set to zero with probability ``p``, which is dropping
unit ``k``. :class:`DropoutGuide` is that ``q`` as a Pyro guide, so a dropout network is fitted
by ``SVI`` and predicted by :func:`bayesdl.inference.predict` like every other posterior.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from operator import attrgetter
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule, PyroParam
from pyro.poutine.runtime import am_i_wrapped
from torch import Tensor, nn

from bayesdl._validation import check_choice, check_positive, check_probability
from bayesdl.guides.meanfield import init_from_network
from bayesdl.models import BNN

__all__ = ["FAMILIES", "DropoutGuide", "dropped_weights"]

#: The dropout families: the distribution of the multiplicative noise ``z`` on each input unit.
FAMILIES = ("bernoulli", "gaussian", "concrete")


def dropped_weights(model: BNN, *, drop_inputs: bool = False) -> tuple[str, ...]:
    """Names of the Bayesian weight matrices that a :class:`DropoutGuide` drops units of.

    These are the ``weight`` parameters of the ``nn.Linear`` modules of ``model.net`` that are
    Bayesian in ``model``, in network order. The first ``nn.Linear`` (in module order) reads the
    raw inputs; dropping its columns drops input features, which
    ``MLP(..., dropout=p)`` does not do, so it is left out unless
    ``drop_inputs=True``.

    Arguments:
        model: A :class:`~bayesdl.models.BNN`.
        drop_inputs: Also drop the input units of the first layer.
    """
    linears = [name for name, module in model.net.named_modules() if isinstance(module, nn.Linear)]
    first = linears[0] if linears else None
    dropped = []
    for name in model.bayesian_names:
        owner, _, leaf = name.rpartition(".")
        if leaf == "weight" and owner in linears and (drop_inputs or owner != first):
            dropped.append(name)
    return tuple(dropped)


def _bernoulli_entropy(p: Tensor) -> Tensor:
    """``H(p) = -p log p - (1 - p) log(1 - p)`` in nats, with ``0 log 0 = 0``."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


class DropoutGuide(AutoGuide):
    """The dropout variational family ``q(W_i) = M_i diag(z_i)`` as a Pyro autoguide.

    For every Bayesian weight matrix ``W_i`` of an ``nn.Linear`` layer (shape ``(out, in)``) the
    guide holds the variational parameter ``M_i`` (started at the network's torch
    initialisation), draws one noise value ``z_{i,k}`` per input unit ``k`` as an auxiliary site
    ``"net.<name>_mask"`` and returns ``W_i = M_i diag(z_i)`` through a ``Delta`` site: the
    lecture's ``q(w_{i,k}) = p delta_0 + (1 - p) delta_{m_{i,k}}`` for ``family="bernoulli"``.
    Everything else is a point mass (a ``Delta`` at a learned parameter): biases (the lecture's
    ``q`` has no noise on them), weights of other modules, and the likelihood's global sites
    such as the noise scale ``"sigma"`` when it has a prior, whose value is then a MAP estimate
    (Gal & Ghahramani treat the noise precision ``tau`` as a hyperparameter; a point mass keeps
    that reading and adds only ``-log p(sigma)`` to the objective). With ``flat=True`` models the
    single site ``"weights"`` is assembled from the same per-layer pieces, so both layouts give
    the same guide.

    **What the ELBO becomes.** The masks are auxiliary and excluded from the ELBO (their
    entropy does not depend on ``M``), and a ``Delta`` has log-density 0, so with
    :class:`pyro.infer.Trace_ELBO` one SVI step minimises, at one draw
    ``hat(omega) = {M_i diag(z_i)}``,

        -log p(d | hat(omega)) - log p(hat(omega)) - log p(b) (- log p(sigma)),

    which is dropout training: the usual loss (squared error for a Gaussian likelihood,
    cross-entropy for a categorical one) on the dropped-out network, plus, for a Gaussian prior
    ``N(0, s^2)``, the L2 term ``||M_i diag(z_i)||^2 / (2 s^2)`` on the *sampled* weights and
    ``||b||^2 / (2 s^2)`` on the biases (a Laplace prior gives L1). Averaged over the masks the
    L2 term is ``(1 - p) ||M_i||^2 / (2 s^2)``: weight decay, the lecture's "if ``p(omega)`` is
    Gaussian, minimizing the KL is equivalent to l2 regularization".

    **Mask granularity.** One mask per unit per ELBO sample: each SVI step (and each particle)
    draws one ``z_i`` that the whole minibatch shares, not one per data point as in the
    lecture's "for each sample within a mini-batch". The model's weights are global sites - one
    network per forward pass, as ``omega`` is one draw of ``q(omega)`` - so per-point masks
    would need per-point weight copies. The per-batch estimator has the same expectation (the
    same ``q``, the same ELBO, unbiased gradients) with more variance between steps; per-point
    masks are a variance reduction of it, like the local reparameterisation trick of Kingma et
    al. At prediction time this is the lecture's Monte Carlo estimate: every draw of
    ``Predictive`` (and :func:`~bayesdl.inference.predict`) is one sampled network, one mask per
    unit, shared by all test points.

    **Families.**

    - ``"bernoulli"``: MC dropout (Gal & Ghahramani, 2016), ``z ~ Bernoulli(1 - p)``.
    - ``"gaussian"``: multiplicative Gaussian noise ``z ~ N(1, alpha)``, by default with
      ``alpha = p / (1 - p)``, the variance of Bernoulli dropout rescaled to mean 1 (Srivastava
      et al., 2014). As for the Bernoulli masks, the noise entropy is left out, so the objective
      is Gaussian-dropout training plus the prior on the noisy weights; for fixed ``alpha`` this
      is variational dropout (Kingma et al., 2015), whose KL under their log-uniform prior does
      not depend on ``M``.
    - ``"concrete"``: Concrete dropout (Gal, Hron & Kendall, 2017), one dropout rate ``p_i``
      per layer, learned. ``z`` is the relaxed Bernoulli ``RelaxedBernoulli(temperature,
      1 - p_i)`` so that gradients reach ``p_i``, and the guide adds
      ``pyro.factor(-K_i H(p_i))`` to ``log q`` (``K_i`` input units, ``H`` the Bernoulli
      entropy), so ``Trace_ELBO`` minimises the paper's objective
      ``-log p(d | hat(omega)) - log p(hat(omega)) - sum_i K_i H(p_i)``, the KL approximation
      ``KL(q || p) ~ sum_i [(1 - p_i) ||M_i||^2 / (2 s^2) - K_i H(p_i)]`` in expectation. The
      learned parameter is the mean weight ``(1 - p_i) M_i`` rather than ``M_i`` (the paper's
      code divides by ``1 - p``): the same ``q``, parametrised so that changing ``p_i`` changes
      the noise, not the mean network.

    **Prediction.** :meth:`weight_scaling` (fast and standard) is the deterministic network at
    the mean of ``q``: weights ``(1 - p) M_i`` (``M_i`` for the Gaussian family).
    ``predict(model, guide, x, num_samples=T)`` is MC dropout with ``T`` sampled networks,
    vectorised over ``T``: ``E[y] ~ (1/T) sum_t f(x; w_t)`` and
    ``V[y] ~ sigma^2 + (1/T) sum_t f(x; w_t)^2 - E[y]^2`` (``sigma^2(x)`` from a heteroscedastic
    likelihood: Kendall & Gal's combined aleatoric + epistemic model).

    Use a network without ``nn.Dropout`` layers (``MLP(..., dropout=0)``): the guide is the
    dropout.

    Arguments:
        model: A :class:`~bayesdl.models.BNN` with at least one Bayesian ``nn.Linear`` weight to
            drop.
        p: Dropout probability in ``[0, 1)`` (``(0, 1)`` for ``"concrete"``, where it is the
            initial rate; ``0`` makes the Bernoulli guide a MAP point estimate).
        family: ``"bernoulli"``, ``"gaussian"`` or ``"concrete"``.
        alpha: Noise variance of the Gaussian family (default ``p / (1 - p)``).
        temperature: Temperature of the Concrete relaxation (the paper uses 0.1).
        drop_inputs: Also drop the input features, the columns of the first layer (see
            :func:`dropped_weights`); needed for a network with a single linear layer.
        init_loc_fn: Per-site initialisation; defaults to the network's own torch values
            (:func:`~bayesdl.guides.init_from_network`), other sites at a prior median.

    Raises:
        TypeError: ``model`` is not a :class:`~bayesdl.models.BNN`.
        ValueError: ``p`` outside ``[0, 1)``, ``alpha <= 0``, an unknown ``family``, a
            non-positive ``temperature``, or no weight matrix to drop.

    Example:
        >>> from bayesdl.likelihoods import Homoscedastic
        >>> from bayesdl.nn import MLP
        >>> model = BNN(MLP(1, 1, hidden=(20,)), Homoscedastic(), prior="normal")
        >>> guide = DropoutGuide(model, p=0.1)
        >>> guide.dropped
        ('2.weight',)

    References:
        Gal, Y., & Ghahramani, Z. (2016). Dropout as a Bayesian approximation: representing model
        uncertainty in deep learning. ICML.

        Srivastava, N., Hinton, G., Krizhevsky, A., Sutskever, I., & Salakhutdinov, R. (2014).
        Dropout: a simple way to prevent neural networks from overfitting. JMLR, 15, 1929-1958.

        Kingma, D. P., Salimans, T., & Welling, M. (2015). Variational dropout and the local
        reparameterization trick. NeurIPS.

        Gal, Y., Hron, J., & Kendall, A. (2017). Concrete dropout. NeurIPS.

        Kendall, A., & Gal, Y. (2017). What uncertainties do we need in Bayesian deep learning for
        computer vision? NeurIPS.
    """

    def __init__(
        self,
        model: BNN,
        p: float = 0.1,
        family: str = "bernoulli",
        *,
        alpha: float | None = None,
        temperature: float = 0.1,
        drop_inputs: bool = False,
        init_loc_fn: Callable[[dict[str, Any]], Tensor] | None = None,
    ) -> None:
        if not isinstance(model, BNN):
            raise TypeError(f"model must be a bayesdl.models.BNN, got {type(model).__name__}")
        check_choice("family", family, FAMILIES)
        p = check_probability("p", p)
        if family == "concrete" and p == 0:
            raise ValueError("p must lie in (0, 1) for family='concrete' (the initial rate), got 0")
        if alpha is not None:
            if family != "gaussian":
                raise ValueError(
                    f"alpha is the noise variance of family='gaussian', not of family={family!r}"
                )
            check_positive("alpha", alpha)
        elif family == "gaussian":
            if p == 0:
                raise ValueError(
                    "p must be > 0 for family='gaussian' (alpha = p / (1 - p)), or pass alpha > 0"
                )
            alpha = p / (1 - p)
        check_positive("temperature", temperature)
        dropped = dropped_weights(model, drop_inputs=drop_inputs)
        if not dropped:
            raise ValueError(
                "the model has no Bayesian nn.Linear weight matrix to drop units of "
                f"(Bayesian parameters: {list(model.bayesian_names)}, drop_inputs={drop_inputs}); "
                "a network with a single linear layer needs drop_inputs=True"
            )
        if any(isinstance(m, nn.Dropout) for m in model.net.modules()):
            warnings.warn(
                "the network has nn.Dropout layers: during SVI they add torch's dropout on top "
                "of the guide's; build it without them (e.g. MLP(..., dropout=0))",
                UserWarning,
                stacklevel=2,
            )
        if init_loc_fn is None:
            init_loc_fn = init_from_network(model)
        super().__init__(InitMessenger(init_loc_fn)(model))
        self.init_loc_fn = init_loc_fn
        # A tuple, so that the BNN's parameters are not registered as the guide's.
        self._bnn = (model,)
        self.p = p
        self.family = family
        self.alpha = None if alpha is None else float(alpha)
        self.temperature = float(temperature)
        self.drop_inputs = bool(drop_inputs)
        #: Network-parameter names of the weight matrices whose input units are dropped.
        self.dropped: tuple[str, ...] = dropped
        self._point_plan: list[tuple[str, int, tuple[str, ...]]] = []

    @property
    def bnn(self) -> BNN:
        """The :class:`~bayesdl.models.BNN` this guide approximates the posterior of."""
        return self._bnn[0]

    # -- the AutoGuide template ------------------------------------------------------------

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        bnn = self.bnn
        trace = self.prototype_trace
        weight_sites = set(bnn.weight_sites)
        for name in weight_sites:
            if trace.nodes[name]["cond_indep_stack"]:
                raise ValueError(f"weight site {name!r} is inside a plate; expected a global site")
        if bnn.flat:
            start = bnn._unflatten(trace.nodes["weights"]["value"].detach())
        else:
            start = {n: trace.nodes[f"net.{n}"]["value"].detach() for n in bnn.bayesian_names}
        self.means = PyroModule()
        for name in bnn.bayesian_names:
            deep_setattr(self.means, name, PyroParam(start[name].clone(), constraints.real))
        if self.family == "concrete":
            self.dropout_logits = PyroModule()
            ref = start[self.dropped[0]]
            logit = torch.tensor(
                math.log(self.p / (1 - self.p)), dtype=ref.dtype, device=ref.device
            )
            for name in self.dropped:
                deep_setattr(self.dropout_logits, name, PyroParam(logit.clone()))
        self.points = PyroModule()
        self._point_plan = []
        for name, site in trace.iter_stochastic_nodes():
            if name in weight_sites:
                continue
            event_dim = site["fn"].event_dim
            value = PyroParam(site["value"].detach().clone(), site["fn"].support, event_dim)
            deep_setattr(self.points, name, value)
            plates = tuple(f.name for f in site["cond_indep_stack"] if f.vectorized)
            self._point_plan.append((name, event_dim, plates))

    def _fixed_rate(self) -> float:
        """The dropout probability of the Bernoulli and Gaussian families (for the Gaussian
        family the rate whose Bernoulli noise has the same variance, ``alpha / (1 + alpha)``)."""
        if self.family == "gaussian":
            return self.alpha / (1 + self.alpha)  # type: ignore[operator]
        return self.p

    def _drop(self, name: str) -> Tensor:
        """Draw ``z_i`` (one value per input unit) and return ``W_i = M_i diag(z_i)``."""
        mean = attrgetter(name)(self.means)
        units = mean.shape[-1]
        site = f"net.{name}_mask"
        # The masks' own log-density is left out of the ELBO (mask(False)): for Bernoulli and
        # Gaussian noise it is constant in the parameters, and Concrete dropout replaces it by
        # the entropy of the Bernoulli below.
        aux = {"is_auxiliary": True}
        if self.family == "bernoulli":
            keep = mean.new_tensor(1 - self.p)
            noise = dist.Bernoulli(keep).expand([units]).to_event(1)
            z = pyro.sample(site, noise.mask(False), infer=aux)
            return mean * z.unsqueeze(-2)
        if self.family == "gaussian":
            scale = mean.new_tensor(math.sqrt(self.alpha))  # type: ignore[arg-type]
            noise = dist.Normal(mean.new_ones(()), scale).expand([units]).to_event(1)
            z = pyro.sample(site, noise.mask(False), infer=aux)
            return mean * z.unsqueeze(-2)
        logit_p = attrgetter(name)(self.dropout_logits)
        p = torch.sigmoid(logit_p)
        temperature = mean.new_tensor(self.temperature)
        noise = dist.RelaxedBernoulli(temperature, logits=-logit_p).expand([units]).to_event(1)
        z = pyro.sample(site, noise.mask(False), infer=aux)
        # log q gains -K H(p): the Bernoulli entropy term of the Concrete dropout objective
        # (skipped without inference handlers, where a factor has no effect).
        if am_i_wrapped():
            pyro.factor(f"net.{name}_entropy", -units * _bernoulli_entropy(p), has_rsample=True)
        # The learned mean weight is (1 - p) M: divide by the keep probability (inverted dropout).
        return mean * z.unsqueeze(-2) / torch.sigmoid(-logit_p)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Draw one network from ``q``: ``{site: value}`` for every latent site of the model."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        bnn = self.bnn
        dropped = set(self.dropped)
        weights = {
            name: self._drop(name) if name in dropped else attrgetter(name)(self.means)
            for name in bnn.bayesian_names
        }
        result: dict[str, Tensor] = {}
        if bnn.flat:
            result["weights"] = pyro.sample(
                "weights", dist.Delta(self._flatten(weights), event_dim=1)
            )
        else:
            for name, value in weights.items():
                ndim = attrgetter(name)(self.means).ndim
                result[f"net.{name}"] = pyro.sample(
                    f"net.{name}", dist.Delta(value, event_dim=ndim)
                )
        plates = self._create_plates(*args, **kwargs) if any(p[2] for p in self._point_plan) else {}
        for name, event_dim, site_plates in self._point_plan:
            with ExitStack() as stack:
                for plate in site_plates:
                    stack.enter_context(plates[plate])
                value = attrgetter(name)(self.points)
                result[name] = pyro.sample(name, dist.Delta(value, event_dim=event_dim))
        return result

    def _flatten(self, weights: dict[str, Tensor]) -> Tensor:
        """The flat ``"weights"`` vector ``(..., D)`` from per-parameter values, broadcasting
        the dropped matrices' sample dimensions over the point-mass pieces."""
        shapes = {n: attrgetter(n)(self.means).shape for n in weights}
        batch = torch.broadcast_shapes(
            *(v.shape[: v.ndim - len(shapes[n])] for n, v in weights.items())
        )
        return torch.cat(
            [v.expand(batch + shapes[n]).reshape((*batch, -1)) for n, v in weights.items()], -1
        )

    # -- reading the fitted q --------------------------------------------------------------

    def _check_ready(self) -> None:
        if self.prototype_trace is None:
            raise RuntimeError(
                "the guide has not been set up: fit it first or call guide(x, y) once"
            )

    def dropout_rates(self) -> dict[str, float]:
        """The dropout probability ``p_i`` of every dropped layer, keyed by its weight's site
        name (``"net.2.weight"``): learned for Concrete dropout, fixed otherwise (for the
        Gaussian family the rate whose Bernoulli variance it matches,
        ``alpha / (1 + alpha)``)."""
        self._check_ready()
        with torch.no_grad():
            if self.family != "concrete":
                return {f"net.{n}": self._fixed_rate() for n in self.dropped}
            return {
                f"net.{n}": float(torch.sigmoid(attrgetter(n)(self.dropout_logits)))
                for n in self.dropped
            }

    def variational_parameters(self) -> dict[str, Tensor]:
        """The lecture's variational parameters: ``M_i`` for every Bayesian weight tensor
        (biases and other undropped weights: the point-mass value), keyed by
        ``"net.<name>"``, and the point values of the likelihood's global sites (``"sigma"``)."""
        self._check_ready()
        with torch.no_grad():
            result = {}
            for name in self.bnn.bayesian_names:
                value = attrgetter(name)(self.means).detach().clone()
                if self.family == "concrete" and name in self.dropped:
                    value = value / torch.sigmoid(-attrgetter(name)(self.dropout_logits))
                result[f"net.{name}"] = value
            for name, _, _ in self._point_plan:
                result[name] = attrgetter(name)(self.points).detach().clone()
            return result

    def _mean_weights(self) -> dict[str, Tensor]:
        """``E_q[W]`` per network parameter (the Bernoulli limit for the Concrete family)."""
        with torch.no_grad():
            means = {}
            for name in self.bnn.bayesian_names:
                value = attrgetter(name)(self.means).detach().clone()
                if self.family == "bernoulli" and name in self.dropped:
                    value = value * (1 - self.p)
                means[name] = value
            return means

    def weight_scaling(self) -> dict[str, Tensor]:
        """Test-time weight scaling: the deterministic network at the mean of ``q``.

        Dropped weight matrices are ``(1 - p) M_i`` (the lecture's "rescaling the weights by the
        dropout probability"; ``M_i`` for the Gaussian family, whose noise has mean 1), every
        other site its point value. Each value carries a leading sample dimension of size 1, so
        the result is a one-sample posterior for :func:`~bayesdl.inference.predict`::

            pred = predict(model, guide.weight_scaling(), x, num_samples=None)
        """
        self._check_ready()
        bnn = self.bnn
        means = self._mean_weights()
        if bnn.flat:
            result = {"weights": torch.cat([means[n].reshape(-1) for n in bnn.bayesian_names])}
        else:
            result = {f"net.{n}": value for n, value in means.items()}
        with torch.no_grad():
            for name, _, _ in self._point_plan:
                result[name] = attrgetter(name)(self.points).detach().clone()
        return {name: value.unsqueeze(0) for name, value in result.items()}

    def scaled_network(self) -> nn.Module:
        """A copy of the torch network with the weight-scaling weights loaded, in eval mode: a
        plain module for deployment (``scaled_network()(x)`` is the network output)."""
        self._check_ready()
        net = copy.deepcopy(self.bnn.net)
        params = dict(net.named_parameters())
        with torch.no_grad():
            for name, value in self._mean_weights().items():
                params[name].copy_(value)
        return net.eval()
