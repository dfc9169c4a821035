r"""Defences against adversarial examples: noise augmentation, adversarial training, denoising.

Three defences of a plain torch classifier, all trained by :func:`train_classifier` or
:func:`train_denoiser`:

(a) Gaussian-noise data augmentation (``noise_std > 0``): train on ``clamp(x + N(0, s^2 I))``.
    It smooths the decision function a little and is the base classifier that randomised
    smoothing (:mod:`bayesdl.adversarial.smoothing`) needs; on its own it gives little robustness
    to a worst-case (L-infinity) perturbation.
(b) Adversarial training (``adversary="pgd"`` or ``"fgsm"``): minimise the loss at the worst
    point of the ``eps``-ball found by an attack on the *current* network, the saddle-point
    problem ``min_w E max_{||r||_inf <= eps} loss(y, f_w(x + r))`` of Madry et al. (2018).
    ``"fgsm"`` is the cheap one-step version with a random start and step ``1.25 eps`` (Wong,
    Rice & Kolter, 2020), which avoids the "catastrophic overfitting" of plain FGSM training.
(c) An input denoiser (:class:`DenoisingAutoencoder`, :func:`train_denoiser`) placed in front of
    a fixed classifier (:class:`Denoised`), after the high-level representation guided denoiser
    of Liao et al. (2018). :class:`Denoised` is differentiable end to end, so
    :func:`~bayesdl.adversarial.attacks.pgd` on it is the adaptive white-box attack through the
    denoiser (Athalye, Carlini & Wagner, 2018): a denoiser that only removes the perturbations
    of attacks on the bare classifier is not robust to it.

References:
    Goodfellow, I. J., Shlens, J., & Szegedy, C. (2015). Explaining and harnessing adversarial
    examples. ICLR.

    Madry, A., Makelov, A., Schmidt, L., Tsipras, D., & Vladu, A. (2018). Towards deep learning
    models resistant to adversarial attacks. ICLR.

    Wong, E., Rice, L., & Kolter, J. Z. (2020). Fast is better than free: revisiting adversarial
    training. ICLR.

    Liao, F., Liang, M., Dong, Y., Pang, T., Hu, X., & Zhu, J. (2018). Defense against
    adversarial attacks using high-level representation guided denoiser. CVPR.

    Vincent, P., Larochelle, H., Bengio, Y., & Manzagol, P.-A. (2008). Extracting and composing
    robust features with denoising autoencoders. ICML.

    Athalye, A., Carlini, N., & Wagner, D. (2018). Obfuscated gradients give a false sense of
    security. ICML.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesdl._validation import check_choice, check_positive, check_same_length, check_tensor
from bayesdl.adversarial.attacks import _domain, _labels, pgd
from bayesdl.inference.svi import History, TrainingDivergedError
from bayesdl.nn import ACTIVATIONS, MLP

__all__ = [
    "ADVERSARIES",
    "DENOISER_LOSSES",
    "Denoised",
    "DenoisingAutoencoder",
    "accuracy",
    "adversarial_examples",
    "train_classifier",
    "train_denoiser",
]

#: Attacks :func:`train_classifier` and :func:`train_denoiser` can train against.
ADVERSARIES = ("pgd", "fgsm")

#: Training losses of :func:`train_denoiser`.
DENOISER_LOSSES = ("pixel", "guided")


# --------------------------------------------------------------------------------------------
# Checks and helpers
# --------------------------------------------------------------------------------------------


def _inputs(x: object, domain: tuple[float, float] | None, name: str = "x") -> Tensor:
    x = check_tensor(name, x)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite")
    if domain is not None:
        lo, hi = _domain(domain)
        if float(x.min()) < lo or float(x.max()) > hi:
            raise ValueError(
                f"{name} must lie in the domain [{lo}, {hi}], got values in "
                f"[{float(x.min()):.4g}, {float(x.max()):.4g}] (pass domain=None for no clamp)"
            )
    return x


def _module(name: str, value: object) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    if not any(p.requires_grad for p in value.parameters()):
        raise ValueError(f"{name} has no trainable parameters")
    return value


def _number(name: str, value: object, *, strict: bool) -> float:
    check_positive(name, value, strict=strict)
    if not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)  # type: ignore[arg-type]


def _seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return seed


def _clamp(x: Tensor, domain: tuple[float, float] | None) -> Tensor:
    return x if domain is None else x.clamp(*_domain(domain))


def _draw_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen))


class _Guard:
    """Snapshot of a module's parameters: restores them when a step leaves them non-finite."""

    def __init__(self, module: nn.Module) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.snapshot = [p.detach().clone() for p in self.params]

    def check(self, step: int, loss: float, epoch_losses: list[float], batch_size: int) -> None:
        with torch.no_grad():
            # Elementwise (not a norm, which overflows for huge but finite parameters).
            finite = math.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in self.params)
            if not finite:
                torch._foreach_copy_(self.params, self.snapshot)
                history = History(loss=list(epoch_losses), batch_size=batch_size)
                raise TrainingDivergedError(step, loss, history)
            torch._foreach_copy_(self.snapshot, self.params)


def adversarial_examples(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    adversary: str,
    eps: float,
    *,
    attack_steps: int = 7,
    domain: tuple[float, float] | None = (0.0, 1.0),
    seed: int | None = None,
) -> Tensor:
    """L-infinity adversarial examples of ``model`` as used for training.

    ``"pgd"``: :func:`~bayesdl.adversarial.attacks.pgd` with ``attack_steps`` steps of
    ``2.5 eps / attack_steps`` from a random start (Madry et al., 2018). ``"fgsm"``: one signed
    gradient step of ``1.25 eps`` from a uniform random start in the ball, projected back onto
    it (FGSM-RS of Wong et al., 2020). A module is attacked in eval mode (dropout off) and left
    in the mode it was in.
    """
    check_choice("adversary", adversary, ADVERSARIES)
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    try:
        if adversary == "pgd":
            steps, step_size = attack_steps, 2.5 * eps / attack_steps
        else:
            steps, step_size = 1, 1.25 * eps
        result = pgd(
            model,
            x,
            y,
            eps,
            norm="linf",
            num_steps=steps,
            step_size=step_size,
            random_start=True,
            domain=domain,
            seed=seed,
        )
    finally:
        if was_training is not None:
            model.train(was_training)
    return result.x_adv


# --------------------------------------------------------------------------------------------
# Classifiers: training and accuracy
# --------------------------------------------------------------------------------------------


def train_classifier(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    num_epochs: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    noise_std: float = 0.0,
    adversary: str | None = None,
    eps: float = 0.1,
    attack_steps: int = 7,
    seed: int = 0,
    progress: bool = True,
    domain: tuple[float, float] | None = (0.0, 1.0),
) -> list[float]:
    """Train a plain torch classifier with minibatch Adam on the cross-entropy of its logits.

    Every epoch visits the training set once in a random order. Each minibatch is, in turn,

    1. perturbed with Gaussian noise ``N(0, noise_std^2 I)`` and clamped to ``domain`` when
       ``noise_std > 0`` (defence (a), data augmentation);
    2. replaced by adversarial examples of the current network when ``adversary`` is given
       (defence (b)): L-infinity PGD with ``attack_steps`` steps and a random start (Madry et
       al., 2018) or FGSM with a random start (Wong et al., 2020), both in the ``eps``-ball and
       within ``domain`` (see :func:`adversarial_examples`). As in Madry et al., the network
       is trained on the adversarial examples only.

    After every update the loss and the parameters are checked: if either is NaN or infinite,
    the parameters the step started from are restored and :class:`TrainingDivergedError` is
    raised (its ``history.loss`` holds the means of the completed epochs). The same ``seed``
    (and the same initial network) gives the same result.

    Arguments:
        net: Classifier mapping inputs ``(B, ...)`` to logits ``(B, C)``.
        x: Training inputs ``(N, ...)`` in ``domain``.
        y: Integer labels ``(N,)``.
        num_epochs: Passes over the data.
        batch_size: Minibatch size (the last batch of an epoch may be smaller).
        lr: Adam learning rate.
        weight_decay: Adam's L2 penalty.
        noise_std: Standard deviation of the Gaussian augmentation (``0`` for none).
        adversary: ``None``, ``"pgd"`` or ``"fgsm"``.
        eps: L-infinity budget of the adversary.
        attack_steps: PGD steps of the ``"pgd"`` adversary.
        seed: Seed of the batch order, the noise and the attacks' random starts.
        progress: Show a progress bar over the epochs.
        domain: ``(low, high)`` of valid inputs, or ``None`` for no clamp.

    Returns:
        The mean training loss of every epoch (on the noisy or adversarial inputs it trained on).
        The network is left in eval mode.

    Raises:
        TypeError: ``net`` not a module; ``x`` not floating; ``y`` not integer labels; a
            non-numeric hyperparameter.
        ValueError: Shapes that do not match, values outside ``domain``, a hyperparameter out
            of range, an unknown ``adversary``.
        TrainingDivergedError: The loss or a parameter became NaN/Inf.

    References:
        Madry, A., Makelov, A., Schmidt, L., Tsipras, D., & Vladu, A. (2018). Towards deep
        learning models resistant to adversarial attacks. ICLR.

        Wong, E., Rice, L., & Kolter, J. Z. (2020). Fast is better than free: revisiting
        adversarial training. ICLR.
    """
    net = _module("net", net)
    x = _inputs(x, domain)
    y = _labels("y", y, x.shape[0])
    n = check_same_length(x=x, y=y)
    check_positive("num_epochs", num_epochs, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    lr = _number("lr", lr, strict=True)
    weight_decay = _number("weight_decay", weight_decay, strict=False)
    noise_std = _number("noise_std", noise_std, strict=False)
    if adversary is not None:
        check_choice("adversary", adversary, ADVERSARIES)
        eps = _number("eps", eps, strict=False)
        check_positive("attack_steps", attack_steps, integer=True)
    seed = _seed(seed)

    from tqdm.auto import tqdm

    gen = torch.Generator(device=x.device).manual_seed(seed)
    optim = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    guard = _Guard(net)
    losses: list[float] = []
    step = 0
    bar = tqdm(range(num_epochs), desc="train", disable=not progress, leave=False)
    try:
        for _ in bar:
            order = torch.randperm(n, generator=gen, device=x.device)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                xb, yb = x[idx], y[idx]
                if noise_std > 0:
                    noise = torch.randn(xb.shape, generator=gen, device=xb.device, dtype=xb.dtype)
                    xb = _clamp(xb + noise_std * noise, domain)
                if adversary is not None:
                    xb = adversarial_examples(
                        net,
                        xb,
                        yb,
                        adversary,
                        eps,
                        attack_steps=attack_steps,
                        domain=domain,
                        seed=_draw_seed(gen),
                    )
                net.train()
                loss = F.cross_entropy(net(xb), yb)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                step += 1
                value = float(loss.detach())
                guard.check(step, value, losses, batch_size)
                total += value * idx.numel()
            losses.append(total / n)
            bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
    finally:
        bar.close()
        net.eval()
    return losses


@torch.no_grad()
def accuracy(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch_size: int = 1024
) -> float:
    """Fraction of ``x`` whose ``argmax`` logit equals ``y``, computed in batches.

    A module is evaluated in eval mode and left in the mode it was in.
    """
    x = _inputs(x, None)
    y = _labels("y", y, x.shape[0])
    check_positive("batch_size", batch_size, integer=True)
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    try:
        correct = sum(
            int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
            for i in range(0, x.shape[0], batch_size)
        )
    finally:
        if was_training is not None:
            model.train(was_training)
    return correct / x.shape[0]


# --------------------------------------------------------------------------------------------
# Denoiser
# --------------------------------------------------------------------------------------------


class DenoisingAutoencoder(nn.Module):
    """A fully connected denoising autoencoder for inputs of shape ``(N, *input_shape)``.

    ``flatten -> MLP(D -> hidden -> bottleneck -> reversed(hidden) -> D) -> sigmoid -> reshape``:
    outputs lie in ``[0, 1]``, the pixel domain. The bottleneck and the training noise keep the
    network from learning the identity (Vincent et al., 2008).

    Arguments:
        input_shape: Shape of one input, e.g. ``(1, 8, 8)`` or ``(64,)``.
        hidden: Widths of the encoder's hidden layers (mirrored in the decoder).
        bottleneck: Width of the code.
        activation: Name of the nonlinearity, one of :data:`bayesdl.nn.ACTIVATIONS`.

    References:
        Vincent, P., Larochelle, H., Bengio, Y., & Manzagol, P.-A. (2008). Extracting and
        composing robust features with denoising autoencoders. ICML.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden: Sequence[int] = (128,),
        bottleneck: int = 32,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = (input_shape,)
        if not isinstance(input_shape, Sequence) or not input_shape:
            raise TypeError(
                f"input_shape must be a non-empty sequence of ints, got {input_shape!r}"
            )
        for i, size in enumerate(input_shape):
            check_positive(f"input_shape[{i}]", size, integer=True)
        if isinstance(hidden, int):
            hidden = (hidden,)
        for i, width in enumerate(hidden):
            check_positive(f"hidden[{i}]", width, integer=True)
        check_positive("bottleneck", bottleneck, integer=True)
        check_choice("activation", activation, ACTIVATIONS)
        self.input_shape = tuple(int(s) for s in input_shape)
        dim = math.prod(self.input_shape)
        self.net = MLP(
            dim, dim, hidden=(*hidden, bottleneck, *reversed(tuple(hidden))), activation=activation
        )

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x must have shape (N, *{self.input_shape}), got {tuple(x.shape)}")
        return torch.sigmoid(self.net(x.flatten(1))).view_as(x)


class Denoised(nn.Module):
    """``classifier(denoiser(x))``: a classifier behind an input denoiser, differentiable end to
    end, so that an attack on it is the adaptive white-box attack through the denoiser.

    Arguments:
        denoiser: Module mapping inputs to denoised inputs of the same shape.
        classifier: Module mapping inputs to logits ``(N, C)``.
    """

    def __init__(self, denoiser: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        for name, value in (("denoiser", denoiser), ("classifier", classifier)):
            if not isinstance(value, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
        self.denoiser = denoiser
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.denoiser(x))


def train_denoiser(
    denoiser: nn.Module,
    x_clean: Tensor,
    *,
    y: Tensor | None = None,
    classifier: nn.Module | None = None,
    adversary: str = "pgd",
    eps: float = 0.1,
    attack_steps: int = 7,
    noise_std: float = 0.1,
    loss: str = "pixel",
    num_epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    domain: tuple[float, float] | None = (0.0, 1.0),
) -> list[float]:
    """Train a denoiser on (corrupted, clean) pairs with minibatch Adam.

    The corrupted inputs of a minibatch are its clean inputs plus fresh Gaussian noise
    ``N(0, noise_std^2 I)`` clamped to ``domain``; when ``classifier`` is given, they also
    include L-infinity adversarial examples of that (fixed) classifier in the ``eps``-ball
    (:func:`adversarial_examples` with ``adversary``, against the labels ``y`` or, without
    them, the classifier's own decisions on the clean inputs). Since the classifier does not
    change, its adversarial examples are computed once, before training, as Liao et al. (2018)
    do. Both kinds of pair are trained to map back to the clean input.

    Losses (``loss``):

    * ``"pixel"``: mean squared error between the denoised and the clean input (the pixel
      guided denoiser).
    * ``"guided"``: the high-level representation guided loss of Liao et al. (2018), the mean
      absolute difference between the classifier's logits on the denoised and on the clean
      input (``requires classifier``), plus the pixel MSE so that the denoiser also learns to
      reproduce the image. Liao et al. find that matching the classifier's representation
      suppresses the perturbation's amplification through the network better than pixels do.

    Arguments:
        denoiser: Module to train (e.g. :class:`DenoisingAutoencoder`).
        x_clean: Clean training inputs ``(N, ...)`` in ``domain``.
        y: Labels ``(N,)`` to attack (optional; only with ``classifier``).
        classifier: Fixed classifier whose adversarial examples are added (not trained).
        adversary: ``"pgd"`` or ``"fgsm"``.
        eps: L-infinity budget of the adversarial examples.
        attack_steps: Steps of the PGD adversary.
        noise_std: Standard deviation of the Gaussian corruption (``> 0``).
        loss: ``"pixel"`` or ``"guided"``.
        num_epochs: Passes over the data.
        batch_size: Minibatch size.
        lr: Adam learning rate.
        weight_decay: Adam's L2 penalty.
        seed: Seed of the batch order, the noise and the attacks.
        progress: Show a progress bar over the epochs.
        domain: ``(low, high)`` of valid inputs, or ``None``.

    Returns:
        The mean training loss of every epoch. The denoiser is left in eval mode.

    Raises:
        TypeError, ValueError: Bad arguments, each naming the argument.
        TrainingDivergedError: The loss or a parameter became NaN/Inf (the last finite
            parameters are restored).

    References:
        Liao, F., Liang, M., Dong, Y., Pang, T., Hu, X., & Zhu, J. (2018). Defense against
        adversarial attacks using high-level representation guided denoiser. CVPR.

        Vincent, P., Larochelle, H., Bengio, Y., & Manzagol, P.-A. (2008). Extracting and
        composing robust features with denoising autoencoders. ICML.
    """
    denoiser = _module("denoiser", denoiser)
    x_clean = _inputs(x_clean, domain, "x_clean")
    n = x_clean.shape[0]
    if classifier is not None and not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be a torch.nn.Module, got {type(classifier).__name__}")
    if y is not None:
        if classifier is None:
            raise ValueError("y is only used with a classifier (to attack it); pass classifier")
        y = _labels("y", y, n)
    check_choice("adversary", adversary, ADVERSARIES)
    check_choice("loss", loss, DENOISER_LOSSES)
    if loss == "guided" and classifier is None:
        raise ValueError("loss='guided' needs a classifier")
    eps = _number("eps", eps, strict=False)
    check_positive("attack_steps", attack_steps, integer=True)
    noise_std = _number("noise_std", noise_std, strict=True)
    check_positive("num_epochs", num_epochs, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    lr = _number("lr", lr, strict=True)
    weight_decay = _number("weight_decay", weight_decay, strict=False)
    seed = _seed(seed)

    from tqdm.auto import tqdm

    gen = torch.Generator(device=x_clean.device).manual_seed(seed)
    x_adv: Tensor | None = None
    frozen: list[tuple[nn.Parameter, bool]] = []
    classifier_was_training = classifier is not None and classifier.training
    if classifier is not None:
        classifier.eval()
        frozen = [(p, p.requires_grad) for p in classifier.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        if y is None:
            with torch.no_grad():
                y = torch.cat(
                    [classifier(x_clean[i : i + 1024]).argmax(-1) for i in range(0, n, 1024)]
                )
        x_adv = adversarial_examples(
            classifier,
            x_clean,
            y,
            adversary,
            eps,
            attack_steps=attack_steps,
            domain=domain,
            seed=_draw_seed(gen),
        )

    optim = torch.optim.Adam(denoiser.parameters(), lr=lr, weight_decay=weight_decay)
    guard = _Guard(denoiser)
    losses: list[float] = []
    step = 0
    bar = tqdm(range(num_epochs), desc="denoiser", disable=not progress, leave=False)
    try:
        for _ in bar:
            order = torch.randperm(n, generator=gen, device=x_clean.device)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                clean = x_clean[idx]
                noise = torch.randn(
                    clean.shape, generator=gen, device=clean.device, dtype=clean.dtype
                )
                corrupted = [_clamp(clean + noise_std * noise, domain)]
                if x_adv is not None:
                    corrupted.append(x_adv[idx])
                inputs = torch.cat(corrupted)
                targets = clean.repeat(len(corrupted), *([1] * (clean.ndim - 1)))
                denoiser.train()
                out = denoiser(inputs)
                value_t = F.mse_loss(out, targets)
                if loss == "guided":
                    assert classifier is not None
                    with torch.no_grad():
                        reference = classifier(targets)
                    value_t = value_t + (classifier(out) - reference).abs().mean()
                optim.zero_grad(set_to_none=True)
                value_t.backward()
                optim.step()
                step += 1
                value = float(value_t.detach())
                guard.check(step, value, losses, batch_size)
                total += value * idx.numel()
            losses.append(total / n)
            bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
    finally:
        bar.close()
        denoiser.eval()
        for p, flag in frozen:
            p.requires_grad_(flag)
        if classifier is not None:
            classifier.train(classifier_was_training)
    return losses
