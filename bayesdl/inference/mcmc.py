"""HMC and NUTS on bayesdl models through Pyro's kernels, with a fast plain-torch potential.

Pyro's default potential energy re-runs the model under its effect handlers at every gradient,
which costs milliseconds for a small network. :func:`potential_energy` builds the same function,
``U(z) = -log p(y | x, w) - log p(w) - log |det J|`` over the unconstrained latent values, from
plain torch operations (the network through :func:`torch.func.functional_call`), and
:func:`run_mcmc` hands it to Pyro's ``NUTS``/``HMC`` via ``potential_fn``, so sampling still runs
in Pyro's tested kernels and the samples map back to the model's named sites.

Chains run one after another (each with its own seed and initialisation) and keep their identity
(``samples[site]`` has shape ``(chains, draws, ...)``) all the way to ArviZ.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro.distributions.transforms import biject_to
from pyro.infer import HMC, MCMC, NUTS
from torch import Tensor

from bayesdl._constraints import is_real_support
from bayesdl._validation import (
    check_choice,
    check_finite,
    check_positive,
    check_probability,
    check_same_length,
    check_tensor,
)
from bayesdl.models import BNN
from bayesdl.priors import Prior

__all__ = ["FlatPotential", "MCMCResult", "potential_energy", "run_mcmc"]


def _global_priors(model: BNN) -> dict:
    prior = getattr(model.likelihood, "prior", None)
    return {} if prior is None else {"sigma": prior}


class FlatPotential:
    """The model's potential energy over one flat, unconstrained parameter vector, in plain torch.

    ``U(z) = -log p(y | x, w) - log p(w) - log |det J(z)|`` where ``z`` concatenates the
    unconstrained values of every latent site (Bayesian weights in network order, then the
    likelihood's ``sigma``) and ``J`` is the Jacobian of the map from ``z`` to the sites'
    supports. One flat site keeps Pyro's per-leapfrog bookkeeping (dicts, mass matrix blocks)
    to a single tensor; the network runs through :func:`torch.func.functional_call` on views of
    ``z``. For the package's Normal priors the prior term is a single fused expression.

    Call it with ``{"z": z}`` (the ``potential_fn`` protocol of Pyro's ``HMC``/``NUTS``).

    Arguments:
        model: A :class:`~bayesdl.models.BNN` with a prior.
        x: Inputs of the whole data set.
        y: Targets.
    """

    def __init__(self, model: BNN, x: Tensor, y: Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self.weight_priors = model.priors()
        self.global_priors = _global_priors(model)
        priors = {**self.weight_priors, **self.global_priors}
        self.sites = list(priors)
        self.transforms = {name: biject_to(p.support) for name, p in priors.items()}
        self.real = {name for name, p in priors.items() if is_real_support(p.support)}
        self.shapes = {name: tuple(p.event_shape) for name, p in priors.items()}
        self.sizes = [max(1, int(torch.Size(self.shapes[n]).numel())) for n in self.sites]
        self.dim = sum(self.sizes)
        self.num_weights = sum(self.sizes[: len(self.weight_priors)])
        # Fused Normal prior: one scale vector over all weights, when the model's prior allows.
        self._weight_scale: Tensor | None = None
        prior = model.prior
        if isinstance(prior, Prior) and prior.family == "normal" and self.weight_priors:
            params = dict(model.net.named_parameters())
            scales = [
                torch.full(
                    (params[n].numel(),), prior.scale_for(params[n]), dtype=x.dtype, device=x.device
                )
                for n in model.bayesian_names
            ]
            self._weight_scale = torch.cat(scales)
            self._weight_const = -(
                self._weight_scale.log().sum() + 0.5 * self.num_weights * math.log(2 * math.pi)
            )

    def trace(self) -> Callable[[dict[str, Tensor]], Tensor]:
        """A ``torch.jit.trace`` of this potential (same ``{"z": z}`` protocol), checked against
        the eager one at random points; returns the eager potential if tracing fails."""
        if not self.model.is_mlp:  # functional_call cannot be traced
            return self
        example = torch.randn(self.dim, dtype=self.x.dtype, device=self.x.device)
        try:
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about constant shapes
                traced = torch.jit.trace(lambda z: self({"z": z}), (example,), check_trace=False)
            for _ in range(3):
                z = torch.randn_like(example)
                if not torch.allclose(traced(z), self({"z": z}), rtol=1e-4, atol=1e-4):
                    raise RuntimeError("the traced potential disagrees with the eager one")
        except Exception as err:  # tracing is an optimisation: fall back, but say so
            warnings.warn(
                f"JIT tracing of the potential failed ({err}); sampling eagerly", stacklevel=2
            )
            return self
        return lambda params: traced(params["z"])

    def unflatten(self, z: Tensor) -> dict[str, Tensor]:
        """Constrained site values from ``z`` of shape ``(..., dim)``."""
        batch = z.shape[:-1]
        out = {}
        for name, piece in zip(self.sites, z.split(self.sizes, dim=-1), strict=True):
            value = piece.reshape(batch + self.shapes[name])
            out[name] = value if name in self.real else self.transforms[name](value)
        return out

    def flatten(self, values: dict[str, Tensor]) -> Tensor:
        """``z`` from constrained site values (the inverse of :meth:`unflatten`)."""
        pieces = []
        for name in self.sites:
            value = values[name]
            if name not in self.real:
                value = self.transforms[name].inv(value)
            pieces.append(value.reshape(-1))
        return torch.cat(pieces)

    def __call__(self, params: dict[str, Tensor]) -> Tensor:
        z = params["z"]
        pieces = z.split(self.sizes)
        log_joint = z.new_zeros(())
        weights = {}
        for name, piece in zip(self.weight_priors, pieces, strict=False):
            u = piece.reshape(self.shapes[name])
            if name in self.real:
                weights[name] = u
            else:
                value = self.transforms[name](u)
                log_joint = log_joint + self.transforms[name].log_abs_det_jacobian(u, value).sum()
                weights[name] = value
        if self._weight_scale is not None:
            w = z[: self.num_weights]
            log_joint = (
                log_joint + self._weight_const - 0.5 * (w / self._weight_scale).square().sum()
            )
        else:
            for name, prior in self.weight_priors.items():
                log_joint = log_joint + prior.log_prob(weights[name])
        globals_ = {}
        for name, piece in zip(self.global_priors, pieces[len(self.weight_priors) :], strict=True):
            u = piece.reshape(self.shapes[name])
            value = self.transforms[name](u)
            log_joint = log_joint + self.transforms[name].log_abs_det_jacobian(u, value).sum()
            log_joint = log_joint + self.global_priors[name].log_prob(value).sum()
            globals_[name] = value
        output = self.model.network_output(self.x, weights)
        log_joint = log_joint + self.model.likelihood(output, **globals_).log_prob(self.y).sum()
        return -log_joint


def potential_energy(model: BNN, x: Tensor, y: Tensor) -> FlatPotential:
    """The fast potential of ``model`` given ``(x, y)``: see :class:`FlatPotential`."""
    return FlatPotential(model, x, y)


@dataclass
class MCMCResult:
    """Draws of every latent site with their chain structure, and the sampler's statistics.

    Attributes:
        samples: ``{site: tensor of shape (chains, draws, *site_shape)}`` in the sites' own
            (constrained) spaces.
        divergences: Boolean ``(chains, draws)``: the trajectory of that draw diverged.
        step_size: Adapted step size of each chain.
        acceptance_rate: Pyro's acceptance rate of each chain after warm-up: the fraction of
            iterations whose draw moved (close to 1 for NUTS, which nearly always moves; it is
            not the mean Metropolis acceptance probability that the step size is tuned to).
        num_gradients: Potential-gradient evaluations of each chain (warm-up included).
        wall_time: Seconds spent sampling (all chains).
        kernel: ``"nuts"`` or ``"hmc"``.
    """

    samples: dict[str, Tensor]
    divergences: Tensor
    step_size: list[float]
    acceptance_rate: list[float]
    num_gradients: list[int]
    wall_time: float
    kernel: str = "nuts"
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def num_chains(self) -> int:
        return self.divergences.shape[0]

    @property
    def num_draws(self) -> int:
        return self.divergences.shape[1]

    def flat(self) -> dict[str, Tensor]:
        """Samples with chains concatenated: ``{site: (chains * draws, *site_shape)}``, the form
        that :func:`bayesdl.inference.predict` takes."""
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.samples.items()}


def _chain_initialisation(model: BNN, seed: int) -> dict[str, Tensor]:
    """A fresh torch initialisation of the network (as a new training run would draw) and the
    prior median of the other sites, as constrained site values."""
    net = copy.deepcopy(model.net)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    init = model.site_values(dict(net.named_parameters()))
    for name, prior in _global_priors(model).items():
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            median = prior.sample((101,)).median(0).values
        init[name] = median
    return init


def run_mcmc(
    model: BNN,
    x: Tensor,
    y: Tensor,
    *,
    kernel: str = "nuts",
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 2,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    step_size: float = 0.01,
    num_steps: int = 20,
    full_mass: bool = False,
    seed: int = 0,
    progress: bool = True,
    num_threads: int | None = 1,
    jit_compile: bool = True,
) -> MCMCResult:
    """Sample the posterior of ``model`` given ``(x, y)`` with NUTS or HMC.

    Arguments:
        model: A :class:`~bayesdl.models.BNN` with a prior (the same object SVI fits).
        x: Inputs of the whole data set (no minibatching in MCMC).
        y: Targets.
        kernel: ``"nuts"`` (Hoffman & Gelman, 2014) or ``"hmc"`` (Neal, 2011).
        num_samples: Draws kept per chain.
        warmup_steps: Adaptation steps per chain (step size and diagonal mass matrix).
        num_chains: Independent chains, each from its own torch initialisation of the network.
        target_accept_prob: Target of the step-size adaptation; raise it (0.9-0.95) if there
            are divergences.
        max_tree_depth: NUTS tree depth limit (at most ``2^depth - 1`` gradients per draw).
        step_size: Initial step size.
        num_steps: With the initial ``step_size``, sets the HMC trajectory length
            ``step_size * num_steps`` (``kernel="hmc"`` only). Pyro keeps that *length* fixed
            while it adapts the step size, so the number of leapfrog steps per proposal becomes
            ``length / adapted step size``.
        full_mass: Adapt a dense mass matrix instead of a diagonal one.
        seed: Seed of chain ``c`` is ``seed + c``.
        progress: Show Pyro's progress bar.
        jit_compile: Record the potential with ``torch.jit.trace`` (MLP-like networks; others,
            or a failed trace, sample eagerly with a warning). The trace is checked against the
            eager potential before use.
        num_threads: torch intra-op threads while sampling (restored afterwards). A leapfrog step
            of a small network is a chain of tiny operations where handing work to other
            threads costs more than it saves, so the default is 1; ``None`` keeps torch's
            setting (for large data sets).

    Returns:
        An :class:`MCMCResult`; ``bayesdl.diagnostics.to_inference_data`` turns it into ArviZ
        InferenceData with R-hat, ESS and divergences.

    References:
        Neal, R. M. (2011). MCMC using Hamiltonian dynamics. Handbook of Markov Chain Monte Carlo.

        Hoffman, M. D., & Gelman, A. (2014). The No-U-Turn sampler. JMLR, 15, 1593-1623.
    """
    if not isinstance(model, BNN):
        raise TypeError(f"model must be a bayesdl.models.BNN, got {type(model).__name__}")
    if not model.latent_sites:
        raise ValueError("the model has no latent sites to sample: give it a prior")
    check_tensor("x", x)
    check_tensor("y", y)
    check_same_length(x=x, y=y)
    check_finite("x", x)
    check_finite("y", y)
    check_choice("kernel", kernel, ("nuts", "hmc"))
    check_positive("num_samples", num_samples, integer=True)
    check_positive("warmup_steps", warmup_steps, strict=False, integer=True)
    check_positive("num_chains", num_chains, integer=True)
    check_probability("target_accept_prob", target_accept_prob)
    check_positive("max_tree_depth", max_tree_depth, integer=True)
    check_positive("step_size", step_size)
    check_positive("num_steps", num_steps, integer=True)

    potential = FlatPotential(model, x, y)
    energy = potential.trace() if jit_compile else potential
    counter = [0]

    def counted(params: dict[str, Tensor]) -> Tensor:
        counter[0] += 1
        return energy(params)

    chains: list[dict[str, Tensor]] = []
    divergences, step_sizes, accept, grads = [], [], [], []
    start = time.perf_counter()
    was_training = model.training
    threads = torch.get_num_threads()
    if num_threads is not None:
        check_positive("num_threads", num_threads, integer=True)
        torch.set_num_threads(num_threads)
    model.eval()
    try:
        for chain in range(num_chains):
            pyro.set_rng_seed(seed + chain)
            counter[0] = 0
            common = dict(
                potential_fn=counted,
                step_size=step_size,
                adapt_step_size=True,
                adapt_mass_matrix=True,
                full_mass=full_mass,
                target_accept_prob=target_accept_prob,
            )
            if kernel == "nuts":
                k = NUTS(**common, max_tree_depth=max_tree_depth)
            else:
                k = HMC(**common, num_steps=num_steps)
            mcmc = MCMC(
                k,
                num_samples=num_samples,
                warmup_steps=warmup_steps,
                initial_params={"z": potential.flatten(_chain_initialisation(model, seed + chain))},
                disable_progbar=not progress,
            )
            mcmc.run()
            chains.append(potential.unflatten(mcmc.get_samples()["z"]))
            # The kernel's record as MCMC kept it at the end of the chain (the kernel resets
            # itself afterwards); MCMC.diagnostics() would also compute a split R-hat, which
            # needs at least 4 draws.
            diag = (getattr(mcmc, "_diagnostics", None) or [None])[0] or {}
            flags = torch.zeros(num_samples, dtype=torch.bool)
            idx = [i for i in diag.get("divergences", []) if 0 <= i < num_samples]
            if idx:
                flags[torch.as_tensor(idx, dtype=torch.long)] = True
            divergences.append(flags)
            step_sizes.append(float(k.step_size))
            accept.append(float(diag.get("acceptance rate", float("nan"))))
            grads.append(counter[0])
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    samples = {name: torch.stack([c[name] for c in chains]) for name in chains[0]}
    settings = {
        "num_samples": num_samples,
        "warmup_steps": warmup_steps,
        "num_chains": num_chains,
        "target_accept_prob": target_accept_prob,
        "max_tree_depth": max_tree_depth,
        "full_mass": full_mass,
        "seed": seed,
        "jit_compile": jit_compile,
    }
    return MCMCResult(
        samples=samples,
        divergences=torch.stack(divergences),
        step_size=step_sizes,
        acceptance_rate=accept,
        num_gradients=grads,
        wall_time=time.perf_counter() - start,
        kernel=kernel,
        settings=settings,
    )
