r"""Adversarial attacks: FGSM, BIM and PGD (L-infinity and L2), untargeted and targeted.

An attack looks for a small perturbation ``r`` with ``x + r`` in the input domain that changes a
classifier's decision. Untargeted attacks increase the loss of the true label,
``max_r loss(y, f(x + r))``; targeted attacks decrease the loss of a chosen label,
``min_r loss(y_target, f(x + r))``, both subject to ``||r|| <= eps`` (the lecture's
``||r|| <= L``).

Every attack takes any differentiable classifier: a callable mapping inputs ``(N, ...)`` to logits
``(N, C)`` (a ``torch.nn.Module``, or :class:`ModelAverage` for the package's Bayesian
predictive). A module is attacked in eval mode and its mode restored afterwards. Inputs may be
flat ``(N, D)`` or images ``(N, C, H, W)``.

References:
    Szegedy, C., Zaremba, W., Sutskever, I., Bruna, J., Erhan, D., Goodfellow, I., & Fergus, R.
    (2014). Intriguing properties of neural networks. ICLR.

    Goodfellow, I. J., Shlens, J., & Szegedy, C. (2015). Explaining and harnessing adversarial
    examples. ICLR.

    Kurakin, A., Goodfellow, I., & Bengio, S. (2017). Adversarial examples in the physical world.
    ICLR workshop.

    Madry, A., Makelov, A., Schmidt, L., Tsipras, D., & Vladu, A. (2018). Towards deep learning
    models resistant to adversarial attacks. ICLR.

    Athalye, A., Carlini, N., & Wagner, D. (2018). Obfuscated gradients give a false sense of
    security. ICML (expectation over transformation for randomised models).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import pyro
import pyro.util
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesdl._validation import check_choice, check_positive, check_tensor

__all__ = [
    "NORMS",
    "AttackResult",
    "ModelAverage",
    "bim",
    "check_attack_inputs",
    "fgsm",
    "input_gradient",
    "pgd",
]

#: Perturbation norms of :func:`pgd`.
NORMS = ("linf", "l2")

Classifier = Callable[[Tensor], Tensor]
#: An attack objective ``loss(x, labels) -> scalar``, summed over examples.
Objective = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns.

    Attributes:
        x_adv: Adversarial inputs, the shape of ``x``.
        perturbation: ``x_adv - x``.
        pred: The classifier's decision on ``x_adv``, ``(N,)``.
        success: ``(N,)`` booleans: the decision differs from ``y`` (untargeted) or equals the
            target (targeted).
        targeted: Whether the attack was targeted.
    """

    x_adv: Tensor
    perturbation: Tensor
    pred: Tensor
    success: Tensor
    targeted: bool

    @property
    def success_rate(self) -> float:
        """Fraction of successful examples."""
        return float(self.success.float().mean())


def check_attack_inputs(
    x: object,
    y: object,
    eps: float,
    domain: tuple[float, float] | None,
    target: object = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate an attack's inputs; returns ``(x, y, target)`` as tensors.

    Raises:
        ValueError: ``eps < 0``; ``x`` empty, not finite or outside ``domain``; labels whose
            shape is not ``(N,)``.
        TypeError: ``x`` not a floating tensor; labels not integer tensors.
    """
    x = check_tensor("x", x)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (N, ...) with N >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if domain is not None:
        lo, hi = _domain(domain)
        if float(x.min()) < lo or float(x.max()) > hi:
            raise ValueError(
                f"x must lie in the domain [{lo}, {hi}], got values in "
                f"[{float(x.min()):.4g}, {float(x.max()):.4g}] (pass domain=None for no clamp)"
            )
    labels = [_labels("y", y, x.shape[0])]
    labels.append(None if target is None else _labels("target", target, x.shape[0]))
    if labels[1] is not None and bool((labels[1] == labels[0]).any()):
        raise ValueError(
            f"target equals the true label y for {int((labels[1] == labels[0]).sum())} "
            "examples: a targeted attack needs another class"
        )
    return x, labels[0], labels[1]


def _domain(domain: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in domain)
    except (TypeError, ValueError) as err:
        raise ValueError(f"domain must be (low, high) or None, got {domain!r}") from err
    if not lo < hi:
        raise ValueError(f"domain must be (low, high) with low < high, got {domain!r}")
    return lo, hi


def _labels(name: str, value: object, n: int) -> Tensor:
    value = check_tensor(name, value)
    if value.is_floating_point() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class labels, got dtype {value.dtype}")
    if value.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match x, got {tuple(value.shape)}")
    return value.long()


def input_gradient(
    model: Classifier, x: Tensor, labels: Tensor, loss: Objective | None = None
) -> tuple[Tensor, Tensor]:
    """``(loss, d loss / d x)`` of the attack's objective at ``x``.

    The default objective is the summed cross-entropy of ``labels`` under ``model``'s logits; the
    sum (not the mean) keeps each example's gradient independent of the batch size. A custom
    ``loss(x, labels)`` must return such a sum (a scalar) too.
    """
    x = x.detach().requires_grad_(True)
    if loss is not None:
        value = loss(x, labels)
        if not isinstance(value, Tensor) or value.ndim != 0:
            raise ValueError(
                "loss(x, labels) must return a scalar tensor (the objective summed over examples)"
            )
    else:
        logits = model(x)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"model must return logits of shape (N, C) = ({x.shape[0]}, C), got "
                f"{tuple(logits.shape)}"
            )
        value = F.cross_entropy(logits, labels, reduction="sum")
    (grad,) = torch.autograd.grad(value, x)
    bad = ~torch.isfinite(grad).flatten(1).all(1)
    if bool(bad.any()):
        # A NaN step would be silently zero under sign() (L-inf) or spread NaN (L2).
        raise FloatingPointError(
            f"the attack objective's input gradient is not finite for {int(bad.sum())} of "
            f"{x.shape[0]} examples (e.g. log 0 in a custom loss)"
        )
    return value.detach(), grad


def _result(
    model: Classifier, x: Tensor, x_adv: Tensor, y: Tensor, target: Tensor | None
) -> AttackResult:
    with torch.no_grad():
        pred = model(x_adv).argmax(-1)
    success = pred == target if target is not None else pred != y
    return AttackResult(
        x_adv=x_adv, perturbation=x_adv - x, pred=pred, success=success, targeted=target is not None
    )


def _check_objective(loss: Objective | None, target: Tensor | None) -> None:
    if loss is not None and target is not None and getattr(loss, "untargeted_only", False):
        raise ValueError(
            "this loss is for untargeted attacks only (it ascends away from the labels): "
            "pass target=None"
        )


@contextlib.contextmanager
def _eval_mode(model: Classifier) -> Iterator[None]:
    """Attack a module in eval mode (no dropout noise, batch-norm statistics fixed), then
    restore its mode. A randomised model is attacked through :class:`ModelAverage`."""
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _clamp(x: Tensor, domain: tuple[float, float] | None) -> Tensor:
    return x if domain is None else x.clamp(*_domain(domain))


def fgsm(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    target: Tensor | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    loss: Objective | None = None,
) -> AttackResult:
    """The fast gradient sign method (Goodfellow et al., 2015): one step of size ``eps``.

    Untargeted: ``x_adv = x + eps sign(grad_x loss(y, f(x)))``. Targeted: ``x_adv = x - eps
    sign(grad_x loss(target, f(x)))``. Then ``x_adv`` is clamped to ``domain``.

    Arguments:
        model: Classifier returning logits ``(N, C)``.
        x: Clean inputs in ``domain``.
        y: True labels ``(N,)``.
        eps: L-infinity budget.
        target: Target labels ``(N,)`` for a targeted attack.
        domain: ``(low, high)`` of valid inputs (pixels in ``[0, 1]``), or ``None``.
        loss: The objective ``loss(x, labels)`` (summed over examples) to ascend, or to descend
            for a targeted attack; default the cross-entropy of ``model``'s logits. E.g.
            :func:`~bayesdl.adversarial.detection.detector_aware_loss`.
    """
    x, y, target = check_attack_inputs(x, y, eps, domain, target)
    _check_objective(loss, target)
    with _eval_mode(model):
        _, grad = input_gradient(model, x, y if target is None else target, loss)
        sign = -1.0 if target is not None else 1.0
        x_adv = _clamp(x + sign * eps * grad.sign(), domain).detach()
        return _result(model, x, x_adv, y, target)


def _flat_norm(t: Tensor) -> Tensor:
    """L2 norm of each example, shaped to broadcast against it."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


def _project(delta: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta)).clamp(max=1.0)


def pgd(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "linf",
    num_steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    target: Tensor | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    seed: int | None = None,
    progress: bool = False,
    loss: Objective | None = None,
) -> AttackResult:
    """Projected gradient descent (Madry et al., 2018) in an L-infinity or L2 ball.

    Each step moves along the loss gradient's sign (L-infinity) or its normalised direction (L2)
    by ``step_size``, then projects onto the ``eps``-ball around ``x`` and clamps to ``domain``
    (clamping never leaves the ball, since ``x`` is in the domain). Untargeted steps ascend the
    loss of ``y``, targeted steps descend the loss of ``target``. With one step, no random start
    and ``step_size = eps``, L-infinity PGD is :func:`fgsm`.

    A randomised classifier (:class:`ModelAverage`) draws new posterior samples at every step:
    the attack then follows the expected gradient (expectation over transformation).

    Arguments:
        model: Classifier returning logits ``(N, C)``.
        x: Clean inputs in ``domain``.
        y: True labels ``(N,)``.
        eps: Radius of the ball.
        norm: ``"linf"`` or ``"l2"``.
        num_steps: Gradient steps.
        step_size: Step length; default ``2.5 eps / num_steps`` (Madry et al.).
        random_start: Start from a uniform point of the L-infinity ball (L-infinity) or a random
            direction scaled uniformly in the L2 ball (L2).
        target: Target labels ``(N,)`` for a targeted attack.
        domain: ``(low, high)`` of valid inputs, or ``None``.
        seed: Seed of the random start.
        progress: Show a progress bar over the steps.
        loss: The objective ``loss(x, labels)`` (summed over examples); default the
            cross-entropy of ``model``'s logits (see :func:`fgsm`).
    """
    x, y, target = check_attack_inputs(x, y, eps, domain, target)
    _check_objective(loss, target)
    check_choice("norm", norm, NORMS)
    check_positive("num_steps", num_steps, integer=True)
    if step_size is None:
        step_size = 2.5 * eps / num_steps
    check_positive("step_size", step_size, strict=False)
    labels = y if target is None else target
    sign = -1.0 if target is not None else 1.0
    delta = torch.zeros_like(x)
    if random_start and eps > 0:
        gen = torch.Generator(device=x.device)
        if seed is None:
            gen.seed()  # a fresh seed for this generator only: the global RNG is left alone
        else:
            gen.manual_seed(int(seed))
        if norm == "linf":
            delta = (
                torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
            ) * eps
        else:
            direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            radius = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype)
            delta = direction / _flat_norm(direction) * (eps * radius).view_as(_flat_norm(x))
        delta = _clamp(x + delta, domain) - x
    from tqdm.auto import tqdm

    with _eval_mode(model):
        for _ in tqdm(range(num_steps), desc=f"PGD-{norm}", disable=not progress, leave=False):
            _, grad = input_gradient(model, x + delta, labels, loss)
            step = grad.sign() if norm == "linf" else grad / _flat_norm(grad)
            delta = _project(delta + sign * step_size * step, eps, norm)
            delta = (_clamp(x + delta, domain) - x).detach()
        return _result(model, x, (x + delta).detach(), y, target)


def bim(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    num_steps: int = 10,
    step_size: float | None = None,
    target: Tensor | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    progress: bool = False,
    loss: Objective | None = None,
) -> AttackResult:
    """The basic iterative method (iterative FGSM, Kurakin et al., 2017).

    :func:`pgd` in the L-infinity ball without a random start. The default step,
    ``1.25 eps / num_steps``, lets the iterates reach the ball's boundary even when some steps
    are clipped by the domain (Kurakin et al. take ``min(eps + 4, 1.25 eps)`` steps of one
    grey level).
    """
    if step_size is None:
        step_size = 1.25 * eps / num_steps
    return pgd(
        model,
        x,
        y,
        eps,
        norm="linf",
        num_steps=num_steps,
        step_size=step_size,
        random_start=False,
        target=target,
        domain=domain,
        progress=progress,
        loss=loss,
    )


class ModelAverage(nn.Module):
    """The Bayesian model average of a classification BNN as a differentiable classifier.

    ``forward(x)`` returns ``log (1/T) sum_t softmax(f(x, w_t))`` for ``T`` posterior samples
    ``w_t`` (logits of the predictive, so attacks and ``argmax`` use it like any classifier).
    With ``resample=True`` every call draws new samples (new dropout masks for a
    :class:`~bayesdl.guides.DropoutGuide`, a random subset of a dict of MCMC draws): an attack then follows the expected gradient of the
    model-average loss ``-log mean_t p(y | x, w_t)`` (expectation over transformation, Athalye et
    al., 2018), the adaptive attack on a randomised defence.

    Arguments:
        model: A :class:`~bayesdl.models.BNN` with a categorical likelihood.
        posterior: A guide or a dict of posterior samples (see
            :func:`bayesdl.inference.posterior_samples`); ``None`` for a model without latent
            weights (a deterministic network).
        num_samples: ``T``.
        resample: Draw new samples at every call; otherwise one fixed draw (seeded by ``seed``).
        seed: Seed of the fixed draw.
    """

    def __init__(
        self,
        model: nn.Module,
        posterior: object,
        num_samples: int = 20,
        *,
        resample: bool = True,
        seed: int | None = 0,
    ) -> None:
        from bayesdl.models import BNN

        super().__init__()
        if not isinstance(model, BNN):
            raise TypeError(f"model must be a bayesdl.models.BNN, got {type(model).__name__}")
        if model.task != "classification":
            raise ValueError("model must have a classification likelihood (Categorical)")
        check_positive("num_samples", num_samples, integer=True)
        self.model = model
        self.posterior = posterior
        self.num_samples = int(num_samples)
        self.resample = bool(resample)
        self.seed = seed
        self._fixed: dict[str, Tensor] | None = None
        self._all: dict[str, Tensor] | None = None

    def _weights(self, x: Tensor) -> dict[str, Tensor]:
        from bayesdl.inference import posterior_samples

        if self.resample and isinstance(self.posterior, Mapping):
            # A fixed set of draws (e.g. from MCMC): a fresh random subset at every call, drawn
            # with replacement.
            if self._all is None:
                self._all = posterior_samples(self.model, self.posterior, x, num_samples=None)
            total = next(iter(self._all.values())).shape[0] if self._all else 1
            index = torch.randint(total, (self.num_samples,))
            samples = {k: v[index.to(v.device)] for k, v in self._all.items()}
        elif self.resample:
            samples = posterior_samples(self.model, self.posterior, x, num_samples=self.num_samples)
        else:
            if self._fixed is None:
                # Seeded, but the caller's random state is restored: attacks must not reseed it.
                state = pyro.util.get_rng_state()
                try:
                    self._fixed = posterior_samples(
                        self.model, self.posterior, x, num_samples=self.num_samples, seed=self.seed
                    )
                finally:
                    pyro.util.set_rng_state(state)
            samples = self._fixed
        return {s: samples[s].detach() for s in self.model.weight_sites}

    def sample_log_probs(self, x: Tensor) -> Tensor:
        """``log p(y | x, w_t)`` for each of the ``T`` samples, shape ``(T, N, C)`` (``T = 1``
        for a model without latent weights); drawn as :meth:`forward` draws them."""
        weights = self._weights(x)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.network_output(x, weights)
        finally:
            self.model.train(was_training)
        if not weights:
            out = out.unsqueeze(0)
        return out.log_softmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        log_probs = self.sample_log_probs(x)
        return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])
