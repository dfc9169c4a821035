"""HMC and NUTS on bayesdl models through Pyro's kernels, with a fast plain-torch potential.

Pyro's default potential energy re-runs the model under its effect handlers at every gradient,
which costs milliseconds for a small network. :func:`potential_energy` builds the same function,
``U(z) = -log p(y | x, w) - log p(w) - log |det J|`` over the unconstrained latent values, from
plain torch operations (the network through :func:`torch.func.functional_call`), and
:func:`run_mcmc` hands it to Pyro's ``NUTS``/``HMC`` via ``potential_fn``, so sampling still runs
in Pyro's tested kernels and the samples map back to the model's named sites.

Chains run one after another or in worker processes (each with its own seed and starting point,
by default a MAP point from its own torch initialisation) and keep their identity
(``samples[site]`` has shape ``(chains, draws, ...)``) all the way to ArviZ.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
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
from bayesdl.inference._analytic import analytic_potential
from bayesdl.models import BNN
from bayesdl.priors import Prior

__all__ = [
    "FlatPotential",
    "MCMCResult",
    "SamplerWarning",
    "find_map",
    "potential_energy",
    "run_mcmc",
]


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

    For MLP-shaped models with the package's priors and likelihoods, the gradient is
    backpropagated by hand instead (:meth:`value_and_grad`, :attr:`analytic`): at a 1-10-1
    network that removes most of the cost of a gradient, which is autograd's bookkeeping.

    Call it with ``{"z": z}`` (the ``potential_fn`` protocol of Pyro's ``HMC``/``NUTS``).

    Arguments:
        model: A :class:`~bayesdl.models.BNN` with a prior.
        x: Inputs of the whole data set.
        y: Targets.
        analytic: Backpropagate by hand where the model allows it; ``False`` always uses
            autograd.
    """

    def __init__(self, model: BNN, x: Tensor, y: Tensor, *, analytic: bool = True) -> None:
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
                    (params[n].numel(),),
                    prior.scale_for(params[n], n),
                    dtype=x.dtype,
                    device=x.device,
                )
                for n in model.bayesian_names
            ]
            self._weight_scale = torch.cat(scales)
            self._weight_const = -(
                self._weight_scale.log().sum() + 0.5 * self.num_weights * math.log(2 * math.pi)
            )
        self._analytic = analytic_potential(self) if analytic else None

    @property
    def analytic(self) -> bool:
        """Whether the gradient is backpropagated by hand (see :meth:`value_and_grad`)."""
        return self._analytic is not None

    def value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(U(z), dU/dz)``, by hand-written backpropagation for MLP-shaped models with the
        package's priors and likelihoods (no autograd graph), otherwise by autograd."""
        if self._analytic is not None:
            with torch.no_grad():
                return self._analytic(z.detach())
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            u = self({"z": z})
            (grad,) = torch.autograd.grad(u, z)
        return u.detach(), grad

    def trace(self) -> Callable[[dict[str, Tensor]], Tensor]:
        """A ``torch.jit.trace`` of this potential (same ``{"z": z}`` protocol), checked against
        the eager one at random points; returns the eager potential if tracing fails.

        With a hand-differentiated gradient, the traced function computes ``U`` and ``dU/dz``
        in one graph without autograd, and the potential handed to Pyro returns
        ``U + <z - stop_grad(z), dU/dz>``: the value is ``U`` and autograd sees one dot
        product whose gradient is exactly ``dU/dz``.
        """
        example = torch.randn(self.dim, dtype=self.x.dtype, device=self.x.device)
        if self._analytic is None and not self.model.is_mlp:  # functional_call cannot be traced
            return self
        try:
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about constant shapes
                if self._analytic is not None:
                    with torch.no_grad():
                        traced = torch.jit.trace(self._analytic, (example,), check_trace=False)
                else:
                    traced = torch.jit.trace(
                        lambda z: self({"z": z}), (example,), check_trace=False
                    )
            for _ in range(3):
                z = torch.randn_like(example)
                u_ref, g_ref = self._autograd_value_and_grad(z)
                if self._analytic is not None:
                    with torch.no_grad():
                        u, g = traced(z)
                else:
                    u, g = u_ref, g_ref
                    u = traced(z)
                scale = 1e-4 * (1.0 + u_ref.abs())
                if not torch.allclose(u, u_ref, rtol=1e-4, atol=float(scale)):
                    raise RuntimeError("the traced potential disagrees with the eager one")
                if not torch.allclose(
                    g, g_ref, rtol=1e-3, atol=1e-3 * (1.0 + g_ref.abs().max().item())
                ):
                    raise RuntimeError("the traced gradient disagrees with autograd's")
        except Exception as err:  # tracing is an optimisation: fall back, but say so
            warnings.warn(
                f"JIT tracing of the potential failed ({err}); sampling eagerly", stacklevel=2
            )
            return self
        if self._analytic is not None:
            return _carry_gradient(traced)
        return lambda params: traced(params["z"])

    def _autograd_value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            u = self._autograd_call(z)
            (grad,) = torch.autograd.grad(u, z)
        return u.detach(), grad

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
        if self._analytic is None:
            return self._autograd_call(z)
        with torch.no_grad():
            u, grad = self._analytic(z.detach())
        if not z.requires_grad:
            return u
        return u + torch.dot(z - z.detach(), grad)

    def _autograd_call(self, z: Tensor) -> Tensor:
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


def _carry_gradient(
    value_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]],
) -> Callable[[dict[str, Tensor]], Tensor]:
    """A ``{"z": z} -> U`` potential whose autograd gradient is the given hand-computed one."""

    def potential(params: dict[str, Tensor]) -> Tensor:
        z = params["z"]
        with torch.no_grad():
            u, grad = value_and_grad(z.detach())
        if not z.requires_grad:
            return u
        return u + torch.dot(z - z.detach(), grad)

    return potential


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
        wall_time: Seconds spent sampling (all chains, initialisation included).
        kernel: ``"nuts"`` or ``"hmc"``.
        settings: The arguments of the run.
        num_steps: Leapfrog steps of each kept draw, ``(chains, draws)`` (empty if unknown).
    """

    samples: dict[str, Tensor]
    divergences: Tensor
    step_size: list[float]
    acceptance_rate: list[float]
    num_gradients: list[int]
    wall_time: float
    kernel: str = "nuts"
    settings: dict[str, object] = field(default_factory=dict)
    num_steps: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @property
    def num_chains(self) -> int:
        return self.divergences.shape[0]

    @property
    def num_draws(self) -> int:
        return self.divergences.shape[1]

    @property
    def tree_depth_hits(self) -> Tensor:
        """Boolean ``(chains, draws)``: NUTS stopped that trajectory at ``max_tree_depth``
        (``2^depth - 1`` leapfrog steps) instead of at a U-turn. All False for HMC."""
        depth = self.settings.get("max_tree_depth")
        if self.kernel != "nuts" or self.num_steps.numel() == 0 or not isinstance(depth, int):
            return torch.zeros_like(self.divergences)
        return self.num_steps >= 2**depth - 1

    def flat(self) -> dict[str, Tensor]:
        """Samples with chains concatenated: ``{site: (chains * draws, *site_shape)}``, the form
        that :func:`bayesdl.inference.predict` takes."""
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.samples.items()}


class SamplerWarning(UserWarning):
    """NUTS/HMC finished but its draws are suspect: divergent trajectories or trajectories cut
    at the maximum tree depth."""


#: How :func:`run_mcmc` runs several chains.
CHAIN_METHODS = ("sequential", "parallel", "vectorized")

#: ``init`` choices of :func:`run_mcmc` other than a dict of site values or a guide.
INITS = ("map", "network")


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


def find_map(
    potential: FlatPotential, z: Tensor, *, num_steps: int = 1000, lr: float = 0.02
) -> Tensor:
    """A maximum a posteriori point near ``z``: Adam on ``U`` in the unconstrained space.

    A few hundred gradients are cheap next to one NUTS draw at full tree depth (up to 1,023),
    and a chain that starts where the posterior has mass spends its warm-up adapting the step
    size and mass matrix instead of travelling from a random initialisation.

    Arguments:
        potential: The model's :class:`FlatPotential`.
        z: Starting point, shape ``(dim,)``.
        num_steps: Adam steps.
        lr: Adam's learning rate.

    Returns:
        The last finite iterate (``z`` itself if the first step is not finite).
    """
    check_positive("num_steps", num_steps, strict=False, integer=True)
    check_positive("lr", lr)
    point = z.detach().clone().requires_grad_(True)
    best = z.detach().clone()
    optimiser = torch.optim.Adam([point], lr=lr)
    for _ in range(num_steps):
        u, grad = potential.value_and_grad(point.detach())
        if not (torch.isfinite(u) and torch.isfinite(grad).all()):
            break  # keep the last good point: a MAP start must never be NaN
        best = point.detach().clone()
        point.grad = grad
        optimiser.step()
    u, grad = potential.value_and_grad(point.detach())
    if torch.isfinite(u) and torch.isfinite(grad).all():
        best = point.detach().clone()
    return best


def _initial_points(
    model: BNN,
    potential: FlatPotential,
    x: Tensor,
    init: object,
    num_chains: int,
    seed: int,
    map_steps: int,
) -> list[Tensor]:
    """One unconstrained starting vector per chain."""
    if isinstance(init, str):
        check_choice("init", init, INITS)
        points = [
            potential.flatten(_chain_initialisation(model, seed + c)) for c in range(num_chains)
        ]
        if init == "map":
            points = [find_map(potential, z, num_steps=map_steps) for z in points]
        return [z.detach() for z in points]
    if isinstance(init, Mapping):
        missing = sorted(set(potential.sites) - set(init))
        if missing:
            raise ValueError(f"init lacks the latent sites {missing}")
        values = {k: torch.as_tensor(v, dtype=x.dtype, device=x.device) for k, v in init.items()}
        z = potential.flatten(values).detach()
        return [z.clone() for _ in range(num_chains)]
    if callable(init):  # a fitted guide: one independent draw per chain
        from bayesdl.inference.predictive import posterior_samples

        draws = posterior_samples(model, init, x, num_samples=num_chains, seed=seed)
        missing = sorted(set(potential.sites) - set(draws))
        if missing:
            raise ValueError(f"the guide given as init does not sample the sites {missing}")
        return [
            potential.flatten({k: v[c] for k, v in draws.items()}).detach()
            for c in range(num_chains)
        ]
    raise TypeError(
        f"init must be one of {list(INITS)}, a dict of site values or a fitted guide, "
        f"got {type(init).__name__}"
    )


@dataclass
class _ChainSpec:
    """Everything one chain needs; picklable, so a worker process can run it."""

    model: BNN
    x: Tensor
    y: Tensor
    z0: Tensor
    seed: int
    kernel: str
    num_samples: int
    warmup_steps: int
    target_accept_prob: float
    max_tree_depth: int
    step_size: float
    num_steps: int
    full_mass: bool
    jit_compile: bool
    num_threads: int | None
    progress: bool


def _vectorized(potential: FlatPotential, group: int) -> Callable[[dict[str, Tensor]], Tensor]:
    """The potential of ``group`` independent copies of the posterior, over one vector of
    length ``group * dim``: ``U(z_1, ..., z_G) = sum_g U(z_g)``. Its density is the product of
    the copies' densities, so one NUTS chain on it is ``group`` chains of the posterior whose
    trajectories share a step size, a tree and an acceptance decision."""
    dim = potential.dim
    if potential._analytic is not None:
        analytic = potential._analytic

        def value_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
            u, grad = analytic(z.reshape(group, dim))
            return u.sum(), grad.reshape(-1)

        example = torch.randn(group * dim, dtype=potential.x.dtype, device=potential.x.device)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about constant shapes
                traced = torch.jit.trace(value_and_grad, (example,), check_trace=False)
                u_ref, g_ref = value_and_grad(example)
                u, g = traced(example)
            if torch.allclose(u, u_ref) and torch.allclose(g, g_ref):
                return _carry_gradient(traced)
        except Exception:  # tracing is an optimisation: fall back to the eager function
            pass
        return _carry_gradient(value_and_grad)
    return lambda params: (
        potential({"z": params["z"].reshape(group, dim)[0]})
        + sum(potential({"z": z}) for z in params["z"].reshape(group, dim)[1:])
    )


def _run_chain(spec: _ChainSpec) -> list[dict[str, object]]:
    """Run one chain, or one group of vectorised chains (``spec.z0`` of shape
    ``(group, dim)``), in this process; returns each chain's draws (unconstrained) and
    statistics."""
    threads = torch.get_num_threads()
    if spec.num_threads is not None:
        torch.set_num_threads(spec.num_threads)
    was_training = spec.model.training
    spec.model.eval()
    try:
        potential = FlatPotential(spec.model, spec.x, spec.y)
        group = spec.z0.shape[0] if spec.z0.ndim == 2 else 0
        if group:
            energy = _vectorized(potential, group)
        else:
            energy = potential.trace() if spec.jit_compile else potential
        counter = [0]

        def counted(params: dict[str, Tensor]) -> Tensor:
            counter[0] += 1
            return energy(params)

        marks: list[int] = []

        def hook(kernel: object, samples: object, stage: str, i: int) -> None:
            marks.append(counter[0])

        pyro.set_rng_seed(spec.seed)
        common = dict(
            potential_fn=counted,
            step_size=spec.step_size,
            adapt_step_size=True,
            adapt_mass_matrix=True,
            full_mass=spec.full_mass,
            target_accept_prob=spec.target_accept_prob,
        )
        if spec.kernel == "nuts":
            k = NUTS(**common, max_tree_depth=spec.max_tree_depth)
        else:
            k = HMC(**common, num_steps=spec.num_steps)
        mcmc = MCMC(
            k,
            num_samples=spec.num_samples,
            warmup_steps=spec.warmup_steps,
            initial_params={"z": spec.z0.reshape(-1)},
            disable_progbar=not spec.progress,
            hook_fn=hook,
        )
        mcmc.run()
        z = mcmc.get_samples()["z"]
        # The kernel's record as MCMC kept it at the end of the chain (the kernel resets itself
        # afterwards); MCMC.diagnostics() would also compute a split R-hat, which needs at least
        # 4 draws.
        diag = (getattr(mcmc, "_diagnostics", None) or [None])[0] or {}
        flags = torch.zeros(spec.num_samples, dtype=torch.bool)
        idx = [i for i in diag.get("divergences", []) if 0 <= i < spec.num_samples]
        if idx:
            flags[torch.as_tensor(idx, dtype=torch.long)] = True
        # Gradients per iteration from the counter read after each one; the first iteration
        # also pays the initial gradient, which is not a leapfrog step.
        per_iteration = torch.diff(torch.tensor([1, *marks], dtype=torch.long))
        steps = per_iteration[-spec.num_samples :]
        if steps.numel() != spec.num_samples:
            steps = torch.zeros(0, dtype=torch.long)
        stats = {
            "divergences": flags,
            "step_size": float(k.step_size),
            "acceptance_rate": float(diag.get("acceptance rate", float("nan"))),
            "num_gradients": counter[0],
            "num_steps": steps,
        }
        if not group:
            return [{"z": z.detach(), **stats}]
        # Draws (draws, group * dim) -> one entry per chain; the statistics are shared.
        per_chain = z.detach().reshape(z.shape[0], group, -1).transpose(0, 1)
        return [{"z": chain, **stats} for chain in per_chain]
    finally:
        spec.model.train(was_training)
        torch.set_num_threads(threads)


def _run_chain_in_worker(spec: _ChainSpec) -> list[dict[str, object]]:
    """:func:`_run_chain` in a worker process, with its tensors returned as NumPy arrays.

    Torch tensors would travel through torch's shared-memory reduction, whose copy into shared
    memory runs in parallel (OpenMP) for large draws; in a forked worker of a parent that has
    used OpenMP that copy deadlocks. Arrays are pickled by value, and the worker stays at one
    thread until it exits.
    """
    chains = _run_chain(spec)
    if spec.num_threads is not None:
        torch.set_num_threads(spec.num_threads)  # _run_chain restored the inherited count
    return [
        {k: v.detach().cpu().numpy() if isinstance(v, Tensor) else v for k, v in chain.items()}
        for chain in chains
    ]


def _from_worker(chains: list[dict[str, object]], device: torch.device) -> list[dict[str, object]]:
    """Arrays from a worker back to tensors on the data's device (as a sequential run has)."""
    return [
        {
            k: torch.from_numpy(v).to(device) if isinstance(v, np.ndarray) else v
            for k, v in chain.items()
        }
        for chain in chains
    ]


def _run_parallel(specs: list[_ChainSpec], workers: int, progress: bool) -> list[list[dict]]:
    """Chains in worker processes.

    On Linux with one torch thread per worker the workers are forked, as Pyro's own multi-chain
    MCMC does: nothing is re-imported, so a user's script needs no ``__main__`` guard, and a
    one-thread worker never enters an OpenMP region, which is what makes forking after torch
    has used OpenMP unsafe. Otherwise they are spawned (a fresh interpreter that imports the
    main module: scripts then need the guard)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from tqdm.auto import tqdm

    forkable = "fork" in multiprocessing.get_all_start_methods() and sys.platform == "linux"
    one_thread = all(spec.num_threads == 1 for spec in specs)
    context = multiprocessing.get_context("fork" if forkable and one_thread else "spawn")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_run_chain_in_worker, spec) for spec in specs]
            with tqdm(total=len(futures), desc="chains", unit="chain", disable=not progress) as bar:
                for _ in as_completed(futures):
                    bar.update(1)
            device = specs[0].x.device
            return [_from_worker(f.result(), device) for f in futures]
    except BrokenProcessPool as err:
        raise RuntimeError(
            "a worker process of run_mcmc died or could not start. Where workers are started "
            "with 'spawn' (not Linux, or num_threads other than 1) the main script is "
            "re-imported: call run_mcmc under `if __name__ == '__main__':`, or pass "
            "chain_method='sequential'"
        ) from err


def run_mcmc(
    model: BNN,
    x: Tensor,
    y: Tensor,
    *,
    kernel: str = "nuts",
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 4,
    chain_method: str = "vectorized",
    init: object = "map",
    map_steps: int = 1000,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    step_size: float = 0.01,
    num_steps: int = 20,
    full_mass: bool = False,
    seed: int = 0,
    progress: bool = True,
    num_threads: int | None = 1,
    jit_compile: bool = True,
    warn_divergences: float = 0.0,
    warn_tree_depth: float = 0.25,
) -> MCMCResult:
    """Sample the posterior of ``model`` given ``(x, y)`` with NUTS or HMC.

    Sampling runs in Pyro's ``NUTS``/``HMC`` kernels; the potential they integrate is the
    package's :class:`FlatPotential` (hand-differentiated for MLP-shaped models, then traced).

    Arguments:
        model: A :class:`~bayesdl.models.BNN` with a prior (the same object SVI fits).
        x: Inputs of the whole data set (no minibatching in MCMC).
        y: Targets.
        kernel: ``"nuts"`` (Hoffman & Gelman, 2014) or ``"hmc"`` (Neal, 2011).
        num_samples: Draws kept per chain.
        warmup_steps: Adaptation steps per chain (step size and mass matrix).
        num_chains: Independent chains, each from its own starting point and seed.
        chain_method: ``"sequential"`` (one process, one chain after another), ``"parallel"``
            (one worker process per chain, at most one per CPU core; the same draws as
            sequential for the same seed) or ``"vectorized"``: the chains are split into one
            group per CPU core, and each group runs as *one* NUTS chain on the product of
            independent copies of the posterior, ``U(z_1, ..., z_G) = sum_g U(z_g)``, so one
            batched gradient serves every chain of the group and Pyro's per-step overhead is
            paid once per group. It is exact MCMC (the product density is invariant, each copy's
            marginal is the posterior), but the chains of a group share the step size, the
            tree and the acceptance decision, so they are coupled; chains in different groups
            are independent. Statistics (divergences, steps, gradients) are the group's. With
            one CPU core (or one chain) both run in this process, without a worker pool.
        init: Where chains start: ``"map"`` (a fresh torch initialisation of the network per
            chain, then :func:`find_map` from it), ``"network"`` (the torch initialisation
            itself, noise scale at its prior median), a dict ``{site: value}`` (every chain), or
            a fitted guide (one draw per chain, e.g. the mean-field SVI posterior).
        map_steps: Adam steps of the MAP search (``init="map"``).
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
        progress: Show progress (Pyro's bar per chain; a bar over chains when parallel).
        num_threads: torch intra-op threads while sampling (restored afterwards). A leapfrog step
            of a small network is a chain of tiny operations where handing work to other
            threads costs more than it saves, so the default is 1; ``None`` keeps torch's
            setting (for large data sets).
        jit_compile: Record the potential with ``torch.jit.trace`` (MLP-like networks; others,
            or a failed trace, sample eagerly with a warning). The trace is checked against the
            eager potential before use.
        warn_divergences: Warn (:class:`SamplerWarning`) when more than this fraction of the
            kept draws diverged.
        warn_tree_depth: Warn when more than this fraction of the kept NUTS draws stopped at
            ``max_tree_depth``.

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
    check_choice("chain_method", chain_method, CHAIN_METHODS)
    check_positive("num_samples", num_samples, integer=True)
    check_positive("warmup_steps", warmup_steps, strict=False, integer=True)
    check_positive("num_chains", num_chains, integer=True)
    check_positive("map_steps", map_steps, strict=False, integer=True)
    check_probability("target_accept_prob", target_accept_prob)
    check_positive("max_tree_depth", max_tree_depth, integer=True)
    check_positive("step_size", step_size)
    check_positive("num_steps", num_steps, integer=True)
    check_probability("warn_divergences", warn_divergences, allow_one=True)
    check_probability("warn_tree_depth", warn_tree_depth, allow_one=True)
    if num_threads is not None:
        check_positive("num_threads", num_threads, integer=True)

    start = time.perf_counter()
    potential = FlatPotential(model, x, y)
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        starts = _initial_points(model, potential, x, init, num_chains, seed, map_steps)
    finally:
        torch.set_num_threads(threads)
    workers = min(num_chains, os.cpu_count() or 1)
    if chain_method == "vectorized":
        # One group of chains per worker process: chains c, c + workers, ... share a tree.
        groups = [list(range(w, num_chains, workers)) for w in range(workers)]
    else:
        groups = [[c] for c in range(num_chains)]
    specs = [
        _ChainSpec(
            model=model,
            x=x,
            y=y,
            z0=torch.stack([starts[c] for c in g])
            if chain_method == "vectorized"
            else starts[g[0]],
            seed=seed + g[0],
            kernel=kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            step_size=step_size,
            num_steps=num_steps,
            full_mass=full_mass,
            jit_compile=jit_compile,
            num_threads=num_threads,
            # Pyro's bar where the run stays in this process; a bar over chains otherwise.
            progress=progress and (chain_method == "sequential" or len(groups) == 1),
        )
        for g in groups
    ]
    if chain_method in ("parallel", "vectorized") and len(specs) > 1 and workers > 1:
        grouped = _run_parallel(specs, workers, progress)
    else:
        grouped = [_run_chain(spec) for spec in specs]
    # Back to chain order (a vectorised group holds chains c, c + workers, ...).
    order = [c for g in groups for c in g]
    by_chain = dict(zip(order, [run for group in grouped for run in group], strict=True))
    runs = [by_chain[c] for c in range(num_chains)]

    chains = [potential.unflatten(run["z"]) for run in runs]  # type: ignore[arg-type]
    samples = {name: torch.stack([c[name] for c in chains]) for name in chains[0]}
    steps = [run["num_steps"] for run in runs]
    num_steps_tensor = (
        torch.stack(steps)  # type: ignore[arg-type]
        if all(s.numel() == num_samples for s in steps)  # type: ignore[attr-defined]
        else torch.zeros(0, dtype=torch.long)
    )
    settings = {
        "num_samples": num_samples,
        "warmup_steps": warmup_steps,
        "num_chains": num_chains,
        "chain_method": chain_method,
        "init": init if isinstance(init, str) else type(init).__name__,
        "target_accept_prob": target_accept_prob,
        "max_tree_depth": max_tree_depth,
        "full_mass": full_mass,
        "seed": seed,
        "jit_compile": jit_compile,
    }
    result = MCMCResult(
        samples=samples,
        divergences=torch.stack([run["divergences"] for run in runs]),  # type: ignore[misc]
        step_size=[run["step_size"] for run in runs],  # type: ignore[misc]
        acceptance_rate=[run["acceptance_rate"] for run in runs],  # type: ignore[misc]
        num_gradients=[run["num_gradients"] for run in runs],  # type: ignore[misc]
        wall_time=time.perf_counter() - start,
        kernel=kernel,
        settings=settings,
        num_steps=num_steps_tensor,
    )
    _warn_if_suspect(result, warn_divergences, warn_tree_depth)
    return result


def _warn_if_suspect(result: MCMCResult, divergences: float, tree_depth: float) -> None:
    total = result.divergences.numel()
    diverged = int(result.divergences.sum())
    if diverged > divergences * total:
        warnings.warn(
            f"{diverged} of {total} draws diverged: the sampler missed part of the posterior. "
            "Raise target_accept_prob (0.9-0.95) or warm up longer.",
            SamplerWarning,
            stacklevel=3,
        )
    hits = int(result.tree_depth_hits.sum())
    if hits > tree_depth * total:
        warnings.warn(
            f"{hits} of {total} NUTS draws stopped at max_tree_depth="
            f"{result.settings.get('max_tree_depth')} before a U-turn: the draws are more "
            "correlated than they need to be. Check the ESS; raise max_tree_depth or try "
            "full_mass=True.",
            SamplerWarning,
            stacklevel=3,
        )
