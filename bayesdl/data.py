"""The lecture's data: seeded synthetic sets with known ground truth, and real sets shipped by scikit-learn.

Every generator takes a ``seed`` and returns torch tensors split into train and test parts.
Nothing is downloaded: synthetic data come from a seeded generator, real data from the files that
ship inside scikit-learn (diabetes, digits).

Shapes follow one convention across the package: inputs ``x`` are ``(N, D)`` (images
``(N, C, H, W)``), scalar regression targets ``y`` are ``(N,)``, class labels are ``(N,)`` integers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bayesdl._validation import check_choice, check_positive, check_probability

__all__ = [
    "DENSITIES_2D",
    "ClassificationData",
    "RegressionData",
    "Standardizer",
    "bishop",
    "bishop_branches",
    "bishop_mean",
    "diabetes",
    "digits",
    "heteroscedastic",
    "homoscedastic",
    "log_density_2d",
    "sample_2d",
    "toy_mean",
]

DENSITIES_2D = ("moons", "8gaussians", "checkerboard", "rings")
_EXACT_2D = ("8gaussians", "checkerboard")


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Affine map ``(v - mean) / std`` that remembers the statistics of the data it was fit on.

    Fit it on training data only, then apply the same map to test data and invert it on
    predictions (``inverse_transform`` for values, ``inverse_scale`` for standard deviations).
    """

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, values: Tensor) -> Standardizer:
        """Statistics along the first dimension; constant columns get ``std = 1``."""
        if values.ndim == 0 or values.shape[0] < 2:
            raise ValueError(
                f"values needs at least 2 rows to standardize, got {tuple(values.shape)}"
            )
        mean = values.mean(0)
        std = values.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(mean, std)

    def transform(self, values: Tensor) -> Tensor:
        return (values - self.mean) / self.std

    def inverse_transform(self, values: Tensor) -> Tensor:
        return values * self.std + self.mean

    def inverse_scale(self, scale: Tensor) -> Tensor:
        """Map a standard deviation (or any scale) back to the original units."""
        return scale * self.std

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Standardizer:
        return cls(state["mean"].clone(), state["std"].clone())


@dataclass(frozen=True, eq=False)
class RegressionData:
    """A regression set split into train and test parts.

    Attributes:
        x_train: Training inputs, shape ``(N, D)``.
        y_train: Training targets, shape ``(N,)``.
        x_test: Test inputs, shape ``(M, D)``.
        y_test: Test targets, shape ``(M,)``.
        name: Short name of the set.
        mean_fn: True conditional mean ``E[y | x]`` where it exists (synthetic sets).
        noise_fn: True conditional standard deviation of the noise where known.
        x_scaler: Standardizer applied to the inputs, if any.
        y_scaler: Standardizer applied to the targets, if any.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    name: str
    mean_fn: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    noise_fn: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    x_scaler: Standardizer | None = field(default=None, repr=False)
    y_scaler: Standardizer | None = field(default=None, repr=False)


@dataclass(frozen=True, eq=False)
class ClassificationData:
    """A classification set split into train and test parts (labels are ``torch.long``)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    name: str
    num_classes: int


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _split(
    x: Tensor, y: Tensor, test_fraction: float, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = x.shape[0]
    n_test = round(n * test_fraction)
    if n - n_test < 1:
        raise ValueError(f"test_fraction={test_fraction} leaves no training data out of n={n}")
    perm = torch.randperm(n, generator=gen)
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _check_common(n: int, noise_std: float, test_fraction: float) -> None:
    check_positive("n", n, integer=True)
    check_positive("noise_std", noise_std, strict=False)
    check_probability("test_fraction", test_fraction)


# --- Bishop's toy problem ---------------------------------------------------------------------


def bishop_mean(x: Tensor) -> Tensor:
    """The lecture's curve ``x + 0.3 sin(4 pi x)``."""
    return x + 0.3 * torch.sin(4 * math.pi * x)


def bishop(
    n: int = 1000,
    *,
    noise_std: float = 0.1,
    flipped: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> RegressionData:
    """Bishop's toy problem ``y = x + 0.3 sin(4 pi x) + eps``, ``x ~ U(0, 1)``, ``eps ~ N(0, s^2)``.

    With ``flipped=True`` inputs and targets swap: ``p(x | y)`` is multimodal (up to three
    branches), the inverse problem on which a point estimate averages the branches and a mixture
    density network does not. Use :func:`bishop_branches` for the true branches at an input.

    Arguments:
        n: Number of points before the split.
        noise_std: Standard deviation ``s`` of the Gaussian noise on ``y``.
        flipped: Return the inverse problem (input ``y``, target ``x``).
        test_fraction: Fraction of points held out for testing.
        seed: Seed of the generator.

    Returns:
        A :class:`RegressionData` with inputs of shape ``(N, 1)`` and targets of shape ``(N,)``.

    References:
        Bishop, C. M. (1994). Mixture density networks. Technical Report NCRG/4288, Aston
        University.
    """
    _check_common(n, noise_std, test_fraction)
    gen = _generator(seed)
    x = torch.rand(n, generator=gen)
    y = bishop_mean(x) + noise_std * torch.randn(n, generator=gen)
    if flipped:
        x, y = y, x
        data = _split(x.unsqueeze(-1), y, test_fraction, gen)
        return RegressionData(*data, name="bishop-flipped")
    data = _split(x.unsqueeze(-1), y, test_fraction, gen)
    return RegressionData(
        *data,
        name="bishop",
        mean_fn=bishop_mean,
        noise_fn=lambda x: torch.full_like(x, noise_std),
    )


def bishop_branches(y: float, *, tol: float = 1e-7) -> Tensor:
    """All ``x`` in ``[0, 1]`` with ``x + 0.3 sin(4 pi x) = y``: the noise-free branches of the
    flipped problem at input ``y``, found by a dense scan and bisection to ``tol``."""
    grid = torch.linspace(0.0, 1.0, 20001, dtype=torch.float64)
    g = bishop_mean(grid) - y
    roots = grid[g == 0].tolist()  # exact hits on the scan
    for i in torch.nonzero(g[:-1] * g[1:] < 0).flatten().tolist():
        lo, hi = grid[i].item(), grid[i + 1].item()
        increasing = g[i].item() < 0
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            below = bishop_mean(torch.tensor(mid, dtype=torch.float64)).item() < y
            if below == increasing:
                lo = mid
            else:
                hi = mid
        roots.append(0.5 * (lo + hi))
    roots.sort()
    return torch.tensor(roots, dtype=torch.get_default_dtype())


# --- 1-D homoscedastic and heteroscedastic regression -----------------------------------------


def toy_mean(x: Tensor) -> Tensor:
    """Mean function of the 1-D toy sets: ``sin(2x) + 0.3 x``."""
    return torch.sin(2 * x) + 0.3 * x


def _toy(
    n: int,
    noise_std: float,
    noise_fn: Callable[[Tensor], Tensor],
    name: str,
    gap: tuple[float, float] | None,
    x_range: tuple[float, float],
    test_fraction: float,
    seed: int,
) -> RegressionData:
    _check_common(n, noise_std, test_fraction)
    lo, hi = (float(v) for v in x_range)
    if not lo < hi:
        raise ValueError(f"x_range must be (low, high) with low < high, got {x_range}")
    gen = _generator(seed)
    if gap is None:
        x = lo + (hi - lo) * torch.rand(n, generator=gen)
    else:
        g_lo, g_hi = (float(v) for v in gap)
        if not lo <= g_lo < g_hi <= hi:
            raise ValueError(
                f"gap must be an interval (a, b) with {lo} <= a < b <= {hi}, got {gap}"
            )
        # Uniform on [lo, hi] minus the gap: draw on the shortened line, then shift past the gap.
        u = lo + (hi - lo - (g_hi - g_lo)) * torch.rand(n, generator=gen)
        x = torch.where(u < g_lo, u, u + (g_hi - g_lo))
        name = f"{name}-gap"
    y = toy_mean(x) + noise_fn(x) * torch.randn(n, generator=gen)
    data = _split(x.unsqueeze(-1), y, test_fraction, gen)
    return RegressionData(*data, name=name, mean_fn=toy_mean, noise_fn=noise_fn)


def homoscedastic(
    n: int = 500,
    *,
    noise_std: float = 0.2,
    gap: tuple[float, float] | None = None,
    x_range: tuple[float, float] = (-3.0, 3.0),
    test_fraction: float = 0.2,
    seed: int = 0,
) -> RegressionData:
    """1-D regression with constant noise: ``y = sin(2x) + 0.3x + eps``, ``eps ~ N(0, s^2)``.

    Arguments:
        n: Number of points before the split.
        noise_std: The constant noise standard deviation ``s``.
        gap: Optional interval ``(a, b)`` inside ``x_range`` with no inputs, where a model's
            epistemic uncertainty should grow.
        x_range: Interval of the uniform inputs.
        test_fraction: Fraction of points held out for testing.
        seed: Seed of the generator.

    Returns:
        A :class:`RegressionData` whose ``noise_fn`` returns ``s`` everywhere.
    """
    return _toy(
        n,
        noise_std,
        lambda x: torch.full_like(x, noise_std),
        "homoscedastic",
        gap,
        x_range,
        test_fraction,
        seed,
    )


def heteroscedastic(
    n: int = 500,
    *,
    noise_std: float = 0.2,
    gap: tuple[float, float] | None = None,
    x_range: tuple[float, float] = (-3.0, 3.0),
    test_fraction: float = 0.2,
    seed: int = 0,
) -> RegressionData:
    """1-D regression with input-dependent noise ``sigma(x) = s (0.25 + x^2 / 4)``.

    The noise is smallest at ``x = 0`` (``s / 4``) and grows towards the edges (``2.5 s`` at
    ``|x| = 3``); averaged over ``x ~ U(-3, 3)`` it equals ``s``. The mean is that of
    :func:`homoscedastic`. Arguments as in :func:`homoscedastic`.
    """
    return _toy(
        n,
        noise_std,
        lambda x: noise_std * (0.25 + x.square() / 4),
        "heteroscedastic",
        gap,
        x_range,
        test_fraction,
        seed,
    )


# --- 2-D densities for normalizing flows ------------------------------------------------------


def _8gaussians_centres() -> Tensor:
    angles = torch.arange(8) * (math.pi / 4)
    return 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)


_8GAUSSIANS_STD = 0.2


def sample_2d(name: str, n: int = 1000, *, noise: float = 0.05, seed: int = 0) -> Tensor:
    """Draw ``n`` points of shape ``(n, 2)`` from a named 2-D density.

    Arguments:
        name: One of ``"moons"``, ``"8gaussians"``, ``"checkerboard"``, ``"rings"``.
        n: Number of points.
        noise: Standard deviation of the Gaussian jitter of ``moons`` and ``rings`` (the other two
            have fixed, exact densities, see :func:`log_density_2d`).
        seed: Seed of the generator.
    """
    check_choice("name", name, DENSITIES_2D)
    check_positive("n", n, integer=True)
    check_positive("noise", noise, strict=False)
    gen = _generator(seed)
    if name == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=gen)
        return _8gaussians_centres()[k] + _8GAUSSIANS_STD * torch.randn(n, 2, generator=gen)
    if name == "checkerboard":
        # 4 x 4 board of 2 x 2 squares on [-4, 4]^2; the 8 squares with (i + j) even are filled.
        cell = torch.randint(0, 8, (n,), generator=gen)
        i = cell // 2
        j = 2 * (cell % 2) + (i % 2)
        u = torch.rand(n, 2, generator=gen)
        return torch.stack([-4 + 2 * (i + u[:, 0]), -4 + 2 * (j + u[:, 1])], dim=-1)
    if name == "moons":
        t = math.pi * torch.rand(n, generator=gen)
        upper = torch.rand(n, generator=gen) < 0.5
        x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
        y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
        pts = torch.stack([x - 0.5, y - 0.25], dim=-1) * 2
        return pts + noise * torch.randn(n, 2, generator=gen)
    # rings: radii 1, 2, 3 with mass proportional to circumference
    radius = (
        torch.multinomial(torch.tensor([1.0, 2.0, 3.0]), n, replacement=True, generator=gen) + 1
    )
    t = 2 * math.pi * torch.rand(n, generator=gen)
    pts = radius.unsqueeze(-1) * torch.stack([torch.cos(t), torch.sin(t)], dim=-1)
    return pts + noise * torch.randn(n, 2, generator=gen)


def log_density_2d(name: str, x: Tensor) -> Tensor:
    """Exact log-density of ``"8gaussians"`` or ``"checkerboard"`` at points ``x`` of shape ``(..., 2)``.

    ``moons`` and ``rings`` have no closed form and raise a ValueError.
    """
    if name not in _EXACT_2D:
        raise ValueError(f"name={name!r} has no exact log-density; choose one of {list(_EXACT_2D)}")
    if x.shape[-1] != 2:
        raise ValueError(f"x must have a last dimension of size 2, got shape {tuple(x.shape)}")
    if name == "8gaussians":
        d2 = (x.unsqueeze(-2) - _8gaussians_centres().to(x)).square().sum(-1)
        log_comp = -0.5 * d2 / _8GAUSSIANS_STD**2 - math.log(2 * math.pi * _8GAUSSIANS_STD**2)
        return torch.logsumexp(log_comp, dim=-1) - math.log(8)
    i = torch.floor((x[..., 0] + 4) / 2)
    j = torch.floor((x[..., 1] + 4) / 2)
    inside = ((x >= -4) & (x < 4)).all(-1) & ((i + j) % 2 == 0)
    return torch.where(inside, torch.full_like(i, -math.log(32.0)), torch.full_like(i, -math.inf))


# --- Real data shipped with scikit-learn ------------------------------------------------------


def diabetes(
    *, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True
) -> RegressionData:
    """scikit-learn's diabetes regression set (442 patients, 10 features), split and standardized.

    The standardizers are fit on the training part only and kept on the result, so predictions
    can be mapped back to the original units.

    References:
        Efron, B., Hastie, T., Johnstone, I., & Tibshirani, R. (2004). Least angle regression.
        Annals of Statistics, 32(2), 407-499.
    """
    from sklearn.datasets import load_diabetes

    check_probability("test_fraction", test_fraction)
    raw = load_diabetes()
    dtype = torch.get_default_dtype()
    x = torch.as_tensor(raw.data, dtype=dtype)
    y = torch.as_tensor(raw.target, dtype=dtype)
    x_tr, y_tr, x_te, y_te = _split(x, y, test_fraction, _generator(seed))
    if not standardize:
        return RegressionData(x_tr, y_tr, x_te, y_te, name="diabetes")
    xs, ys = Standardizer.fit(x_tr), Standardizer.fit(y_tr)
    return RegressionData(
        xs.transform(x_tr),
        ys.transform(y_tr),
        xs.transform(x_te),
        ys.transform(y_te),
        name="diabetes",
        x_scaler=xs,
        y_scaler=ys,
    )


def digits(
    *, test_fraction: float = 0.2, seed: int = 0, flatten: bool = False
) -> ClassificationData:
    """scikit-learn's handwritten digits: 1,797 images of 8 x 8 pixels scaled to ``[0, 1]``.

    Arguments:
        test_fraction: Fraction held out for testing.
        seed: Seed of the split.
        flatten: Return inputs of shape ``(N, 64)`` instead of images ``(N, 1, 8, 8)``.
    """
    from sklearn.datasets import load_digits

    check_probability("test_fraction", test_fraction)
    raw = load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.get_default_dtype()) / 16.0
    x = x.reshape(-1, 64) if flatten else x.unsqueeze(1)
    y = torch.as_tensor(raw.target, dtype=torch.long)
    return ClassificationData(
        *_split(x, y, test_fraction, _generator(seed)), name="digits", num_classes=10
    )
