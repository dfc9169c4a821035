r"""Randomised smoothing: a classifier with a certified L2 robustness radius.

Given a base classifier ``f`` (any map from inputs to logits), the smoothed classifier returns the
class the base classifier is most likely to output under isotropic Gaussian noise,

``g(x) = argmax_c P(f(x + e) = c),  e ~ N(0, sigma^2 I)``.

If the top class has probability at least ``p_A > 1/2``, then ``g`` keeps its decision on the
whole L2 ball of radius ``R = sigma Phi^{-1}(p_A)`` around ``x`` (Cohen, Rosenfeld & Kolter, 2019,
Theorem 1 with ``p_B = 1 - p_A``). ``g`` cannot be evaluated exactly; :meth:`SmoothedClassifier.
predict` and :meth:`SmoothedClassifier.certify` are Cohen et al.'s Monte Carlo algorithms
PREDICT and CERTIFY, which abstain (label ``-1``) rather than return a wrong answer or a wrong
radius with probability more than ``alpha``.

References:
    Cohen, J., Rosenfeld, E., & Kolter, J. Z. (2019). Certified adversarial robustness via
    randomized smoothing. ICML.

    Lecuyer, M., Atlidakis, V., Geambasu, R., Hsu, D., & Jana, S. (2019). Certified robustness
    to adversarial examples with differential privacy. IEEE S&P.

    Clopper, C. J., & Pearson, E. S. (1934). The use of confidence or fiducial limits illustrated
    in the case of the binomial. Biometrika, 26(4), 404-413.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from bayesdl._validation import check_positive, check_tensor

__all__ = [
    "SmoothedClassifier",
    "binomial_test_two_sided",
    "certified_accuracy",
    "clopper_pearson_lower",
]

Classifier = Callable[[Tensor], Tensor]


def _alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return float(alpha)


def _counts_tensor(name: str, value: object) -> Tensor:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or an integer tensor, got bool")
    if isinstance(value, int):
        return torch.tensor(value, dtype=torch.long)
    value = check_tensor(name, value)
    if value.is_floating_point() or value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must hold integer counts, got dtype {value.dtype}")
    return value.long()


def clopper_pearson_lower(k: int | Tensor, n: int | Tensor, alpha: float) -> Tensor:
    """One-sided ``(1 - alpha)`` Clopper–Pearson lower confidence bound on a binomial proportion.

    ``p_lower = Beta^{-1}(alpha; k, n - k + 1)`` (the ``alpha`` quantile of a Beta distribution),
    and ``0`` when ``k = 0``. For every true ``p``, ``P(p_lower <= p) >= 1 - alpha`` (the
    bound is exact, i.e. conservative, not asymptotic). At ``k = n`` it is ``alpha^(1/n)``.

    Arguments:
        k: Successes, an int or an integer tensor of any shape (vectorised).
        n: Trials, an int or an integer tensor broadcastable against ``k``, with ``n >= 1``.
        alpha: Error probability in ``(0, 1)``.

    Returns:
        A float64 tensor of the broadcast shape of ``k`` and ``n`` (0-dimensional for scalars).

    References:
        Clopper, C. J., & Pearson, E. S. (1934). The use of confidence or fiducial limits
        illustrated in the case of the binomial. Biometrika, 26(4), 404-413.
    """
    from scipy.stats import beta

    k = _counts_tensor("k", k)
    n = _counts_tensor("n", n)
    alpha = _alpha(alpha)
    if bool((n < 1).any()):
        raise ValueError(f"n must be >= 1, got minimum {int(n.min())}")
    try:
        k, n = torch.broadcast_tensors(k, n)
    except RuntimeError as err:
        raise ValueError(
            f"k and n must broadcast, got shapes {tuple(k.shape)} and {tuple(n.shape)}"
        ) from err
    if bool(((k < 0) | (k > n)).any()):
        raise ValueError("k must lie in [0, n]")
    k_np = k.cpu().numpy()
    n_np = n.cpu().numpy()
    safe_k = k_np.clip(min=1)  # beta.ppf needs a > 0; k = 0 is set to 0 below
    bound = torch.as_tensor(beta.ppf(alpha, safe_k, n_np - safe_k + 1), dtype=torch.float64)
    return torch.where(k.cpu() == 0, torch.zeros_like(bound), bound).to(k.device)


def binomial_test_two_sided(k: Tensor, n: Tensor) -> Tensor:
    """Two-sided binomial test p-value of ``k`` successes in ``n`` trials against ``p = 1/2``.

    With ``p = 1/2`` the null distribution is symmetric, so the p-value is
    ``min(1, 2 P(X <= min(k, n - k)))`` for ``X ~ Binomial(n, 1/2)`` — the value
    ``scipy.stats.binomtest(k, n, 0.5).pvalue`` gives, vectorised over ``k`` and ``n``.
    """
    from scipy.stats import binom

    k = _counts_tensor("k", k)
    n = _counts_tensor("n", n)
    if bool((n < 1).any()) or bool(((k < 0) | (k > n)).any()):
        raise ValueError("need n >= 1 and 0 <= k <= n")
    low = torch.minimum(k, n - k)
    p = 2 * binom.cdf(low.cpu().numpy(), n.cpu().numpy(), 0.5)
    return torch.as_tensor(p, dtype=torch.float64).clamp(max=1.0).to(k.device)


class SmoothedClassifier:
    """The Gaussian smoothing ``g`` of a base classifier (Cohen et al., 2019).

    The noise is added to the raw inputs and **not** clamped to a pixel domain: the certificate
    of Theorem 1 holds for ``g(x) = argmax_c P(f(x + e) = c)`` with ``e`` Gaussian on all of
    ``R^d``; clamping ``x + e`` would change the noise distribution (it would no longer be a
    Gaussian translated by the perturbation), and the Neyman–Pearson argument behind the radius
    would no longer apply. Train the base classifier on unclamped noisy inputs for best results.

    Arguments:
        base: Classifier mapping inputs ``(B, ...)`` to logits ``(B, num_classes)``. A module is
            evaluated in eval mode (and left in the mode it was in).
        sigma: Noise standard deviation (``> 0``), the trade-off between accuracy and radius.
        num_classes: Number of classes.

    References:
        Cohen, J., Rosenfeld, E., & Kolter, J. Z. (2019). Certified adversarial robustness via
        randomized smoothing. ICML.
    """

    def __init__(self, base: Classifier, sigma: float, num_classes: int) -> None:
        if not callable(base):
            raise TypeError(f"base must be a callable classifier, got {type(base).__name__}")
        check_positive("sigma", sigma)
        if not math.isfinite(sigma):
            raise ValueError(f"sigma must be finite, got {sigma}")
        check_positive("num_classes", num_classes, integer=True)
        self.base = base
        self.sigma = float(sigma)
        self.num_classes = int(num_classes)

    def __repr__(self) -> str:
        return f"SmoothedClassifier(sigma={self.sigma}, num_classes={self.num_classes})"

    def _inputs(self, x: object) -> Tensor:
        x = check_tensor("x", x)
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"x must have shape (N, ...) with N >= 1, got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x must be finite")
        return x

    @torch.no_grad()
    def counts(
        self,
        x: Tensor,
        num_draws: int,
        *,
        batch_size: int = 1000,
        seed: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        """How often the base classifier picks each class under noise, ``(N, num_classes)``.

        The ``N * num_draws`` noisy copies are evaluated ``batch_size`` at a time, across
        inputs and draws, so a batch holds draws of several inputs when ``num_draws`` is small.
        The same ``seed`` and ``batch_size`` give the same counts; ``seed=None`` draws a fresh
        seed (the global random state is left untouched).

        Arguments:
            x: Inputs ``(N, ...)``.
            num_draws: Noise draws per input.
            batch_size: Noisy inputs per call of the base classifier.
            seed: Seed of the noise.
            progress: Show a progress bar over the batches.
        """
        x = self._inputs(x)
        check_positive("num_draws", num_draws, integer=True)
        check_positive("batch_size", batch_size, integer=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        from tqdm.auto import tqdm

        gen = torch.Generator(device=x.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        n, c = x.shape[0], self.num_classes
        total = n * num_draws
        counts = torch.zeros(n * c, dtype=torch.long, device=x.device)
        base = self.base
        was_training = base.training if isinstance(base, nn.Module) else None
        if isinstance(base, nn.Module):
            base.eval()
        try:
            starts = range(0, total, batch_size)
            for start in tqdm(starts, desc="smoothing", disable=not progress, leave=False):
                which = torch.arange(start, min(start + batch_size, total), device=x.device)
                which = which // num_draws
                clean = x[which]
                noise = torch.randn(clean.shape, generator=gen, device=x.device, dtype=x.dtype)
                logits = base(clean + self.sigma * noise)
                if logits.ndim != 2 or logits.shape != (which.numel(), c):
                    raise ValueError(
                        f"base must return logits of shape (B, num_classes) = "
                        f"({which.numel()}, {c}), got {tuple(logits.shape)}"
                    )
                pred = logits.argmax(-1)
                counts.index_add_(0, which * c + pred, torch.ones_like(pred))
        finally:
            if was_training is not None:
                base.train(was_training)
        return counts.view(n, c)

    def predict(
        self,
        x: Tensor,
        num_draws: int = 100,
        alpha: float = 0.001,
        *,
        batch_size: int = 1000,
        seed: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Cohen et al.'s PREDICT: the smoothed decision, or ``-1`` to abstain.

        Counts the base classifier's decisions over ``num_draws`` noisy copies and runs a
        two-sided binomial test of the top two counts ``n_A, n_B`` against equal probability;
        returns the top class if the p-value is at most ``alpha``, else abstains. The returned
        class differs from ``g(x)`` with probability at most ``alpha`` (Cohen et al.,
        Proposition 1).

        Arguments:
            x: Inputs ``(N, ...)``.
            num_draws: Noise draws per input.
            alpha: Level of the test, in ``(0, 1)``.
            batch_size: Noisy inputs per call of the base classifier.
            seed: Seed of the noise.
            progress: Show a progress bar.

        Returns:
            Labels ``(N,)`` (``torch.long``), ``-1`` where the test does not reject.
        """
        alpha = _alpha(alpha)
        if self.num_classes < 2:
            raise ValueError("predict needs num_classes >= 2")
        counts = self.counts(x, num_draws, batch_size=batch_size, seed=seed, progress=progress)
        top, label = counts.topk(2, dim=-1)
        n_a, n_b = top[:, 0], top[:, 1]
        p_value = binomial_test_two_sided(n_a, n_a + n_b)
        return torch.where(p_value.to(counts.device) <= alpha, label[:, 0], -1)

    def certify(
        self,
        x: Tensor,
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        *,
        batch_size: int = 1000,
        seed: int | None = None,
        progress: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Cohen et al.'s CERTIFY: the smoothed decision and a certified L2 radius.

        1. Guess the top class ``c_A`` from ``n0`` noisy draws (selection).
        2. From ``n`` separate draws, count ``c_A`` and lower-bound its probability by the
           one-sided ``(1 - alpha)`` Clopper–Pearson bound ``p_lower``
           (:func:`clopper_pearson_lower`).
        3. If ``p_lower < 1/2``, abstain (label ``-1``, radius ``0``); otherwise return
           ``c_A`` and ``R = sigma Phi^{-1}(p_lower)``.

        With probability at least ``1 - alpha`` a returned label is ``g(x)`` and ``g`` is
        constant on the L2 ball of radius ``R`` around ``x`` (Cohen et al., Theorem 1 and
        Proposition 2). The largest radius ``n`` draws can certify is
        ``sigma Phi^{-1}(alpha^(1/n))``.

        Arguments:
            x: Inputs ``(N, ...)``.
            n0: Draws used to guess the top class.
            n: Draws used to estimate its probability.
            alpha: Failure probability, in ``(0, 1)``.
            batch_size: Noisy inputs per call of the base classifier.
            seed: Seed of the noise (the two stages use independent streams derived from it).
            progress: Show progress bars.

        Returns:
            ``(labels, radii)``: ``(N,)`` long labels (``-1`` to abstain) and ``(N,)`` float64
            radii (``0`` where abstaining).
        """
        check_positive("n0", n0, integer=True)
        check_positive("n", n, integer=True)
        alpha = _alpha(alpha)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        seed0, seed1 = (int(s) for s in torch.randint(0, 2**62, (2,), generator=gen))
        guess = self.counts(x, n0, batch_size=batch_size, seed=seed0, progress=progress)
        c_a = guess.argmax(-1)
        counts = self.counts(x, n, batch_size=batch_size, seed=seed1, progress=progress)
        n_a = counts.gather(1, c_a[:, None]).squeeze(1)
        p_lower = clopper_pearson_lower(n_a, n, alpha).to(counts.device)
        certified = p_lower >= 0.5
        radii = self.sigma * torch.special.ndtri(p_lower.clamp(min=0.5))
        radii = torch.where(certified, radii, torch.zeros_like(radii))
        labels = torch.where(certified, c_a, -1)
        return labels, radii


def certified_accuracy(
    labels: Tensor, radii: Tensor, y: Tensor, radius_grid: Tensor | Sequence[float]
) -> Tensor:
    """Certified accuracy at each radius: the fraction of inputs that are classified correctly
    **and** certified at a radius ``>= r`` (abstentions count as errors).

    At ``r = 0`` this is the accuracy of the non-abstained predictions over all inputs.

    Arguments:
        labels: Labels from :meth:`SmoothedClassifier.certify`, ``(N,)`` (``-1`` to abstain).
        radii: Certified radii, ``(N,)``, non-negative.
        y: True labels, ``(N,)``.
        radius_grid: Radii ``r`` to evaluate, a 1-d tensor or sequence.

    Returns:
        A float64 tensor of the shape of ``radius_grid``.

    References:
        Cohen, J., Rosenfeld, E., & Kolter, J. Z. (2019). Certified adversarial robustness via
        randomized smoothing. ICML.
    """
    labels = check_tensor("labels", labels, ndim=1)
    radii = check_tensor("radii", radii, ndim=1)
    y = check_tensor("y", y, ndim=1)
    for name, value in (("labels", labels), ("y", y)):
        if value.is_floating_point() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer class labels, got dtype {value.dtype}")
    if not radii.is_floating_point():
        raise TypeError(f"radii must be a floating-point tensor, got dtype {radii.dtype}")
    if labels.shape != y.shape or radii.shape != y.shape:
        raise ValueError(
            f"labels, radii and y must have the same shape (N,), got {tuple(labels.shape)}, "
            f"{tuple(radii.shape)} and {tuple(y.shape)}"
        )
    if y.numel() == 0:
        raise ValueError("y must not be empty")
    if bool((radii < 0).any()) or not bool(torch.isfinite(radii).all()):
        raise ValueError("radii must be finite and >= 0")
    if not isinstance(radius_grid, Tensor):
        try:
            radius_grid = torch.as_tensor(radius_grid, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"radius_grid must be a tensor or a sequence of numbers, got {radius_grid!r}"
            ) from err
    if radius_grid.ndim > 1:
        raise ValueError(f"radius_grid must be 1-dimensional, got shape {tuple(radius_grid.shape)}")
    grid = radius_grid.to(torch.float64)
    correct = (labels.long() == y.long()).to(radii.device)
    ok = correct[None, :] & (radii.double()[None, :] >= grid.reshape(-1, 1).to(radii.device))
    return ok.double().mean(1).reshape(radius_grid.shape)
