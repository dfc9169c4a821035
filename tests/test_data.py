"""Tests of the data generators: shapes, seeding, the stated noise, densities and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch

from bayesdl import data
from tests.common import assert_close

# Every synthetic regression generator, by the name of its result, taking keyword arguments.
SYNTHETIC = {
    "bishop": data.bishop,
    "bishop-flipped": lambda **kw: data.bishop(flipped=True, **kw),
    "homoscedastic": data.homoscedastic,
    "homoscedastic-gap": lambda **kw: data.homoscedastic(gap=(-1.0, 1.0), **kw),
    "heteroscedastic": data.heteroscedastic,
    "heteroscedastic-gap": lambda **kw: data.heteroscedastic(gap=(0.5, 2.0), **kw),
}
REAL = {
    "diabetes": data.diabetes,
    "digits": data.digits,
}
ALL = {**SYNTHETIC, **REAL}


def _tensors(result):
    if isinstance(result, torch.Tensor):
        return [result]
    return [result.x_train, result.y_train, result.x_test, result.y_test]


def _call(name, seed):
    if name in data.DENSITIES_2D:
        return data.sample_2d(name, 300, seed=seed)
    if name in SYNTHETIC:
        return ALL[name](n=300, seed=seed)
    return ALL[name](seed=seed)


ALL_NAMES = [*ALL, *data.DENSITIES_2D]


# --- shapes, dtypes, seeding ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SYNTHETIC))
@pytest.mark.parametrize("n, test_fraction", [(300, 0.2), (101, 0.5), (50, 0.0), (7, 0.3)])
def test_synthetic_regression_shapes(name, n, test_fraction):
    d = SYNTHETIC[name](n=n, test_fraction=test_fraction, seed=1)
    n_test = round(n * test_fraction)
    assert d.x_train.shape == (n - n_test, 1)
    assert d.y_train.shape == (n - n_test,)
    assert d.x_test.shape == (n_test, 1)
    assert d.y_test.shape == (n_test,)
    for t in _tensors(d):
        assert t.dtype == torch.get_default_dtype()
        assert torch.isfinite(t).all()
    assert d.name == name


def test_split_is_a_partition_of_the_draws():
    # Train and test together are the n draws: no point duplicated or lost.
    full = data.homoscedastic(200, test_fraction=0.0, seed=3)
    split = data.homoscedastic(200, test_fraction=0.25, seed=3)
    all_x = torch.cat([split.x_train, split.x_test]).flatten().sort().values
    assert_close(all_x, full.x_train.flatten().sort().values, atol=0, rtol=0)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_same_seed_same_data(name):
    a, b = _call(name, seed=5), _call(name, seed=5)
    for s, t in zip(_tensors(a), _tensors(b), strict=True):
        assert torch.equal(s, t)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_different_seed_different_data(name):
    a, b = _call(name, seed=5), _call(name, seed=6)
    assert not torch.equal(_tensors(a)[0], _tensors(b)[0])


def test_seed_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    data.homoscedastic(50, seed=0)
    data.sample_2d("rings", 50, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_bishop_curve_and_noise_fn():
    d = data.bishop(400, noise_std=0.1, seed=0)
    assert d.mean_fn is data.bishop_mean
    assert ((d.x_train >= 0) & (d.x_train <= 1)).all()
    x = torch.tensor([0.0, 0.125, 0.5])
    assert_close(data.bishop_mean(x), [0.0, 0.425, 0.5], atol=1e-6)
    assert_close(d.noise_fn(x), torch.full((3,), 0.1))


def test_bishop_flipped_swaps_inputs_and_targets():
    d = data.bishop(500, noise_std=0.0, flipped=True, test_fraction=0.0, seed=0)
    assert d.mean_fn is None
    # Without noise the target x and the input y lie exactly on the curve y = f(x).
    assert ((d.y_train >= 0) & (d.y_train <= 1)).all()
    assert_close(data.bishop_mean(d.y_train), d.x_train.squeeze(-1), atol=1e-6)
    plain = data.bishop(500, noise_std=0.0, test_fraction=0.0, seed=0)
    assert_close(plain.x_train.squeeze(-1), d.y_train, atol=0, rtol=0)


# --- the stated noise -------------------------------------------------------------------------


def _all_points(d):
    return torch.cat([d.x_train, d.x_test]).squeeze(-1), torch.cat([d.y_train, d.y_test])


@pytest.mark.parametrize("noise_std", [0.1, 0.5])
@pytest.mark.parametrize("gap", [None, (-1.0, 0.5)])
def test_homoscedastic_noise_std(noise_std, gap):
    d = data.homoscedastic(10_000, noise_std=noise_std, gap=gap, seed=2)
    x, y = _all_points(d)
    residual = y - d.mean_fn(x)
    # Standard error of the std estimate is noise_std / sqrt(2 * 10^4) ~ 0.7%, so 5% is ~7 SE.
    assert abs(residual.std().item() / noise_std - 1) < 0.05
    assert abs(residual.mean().item()) < 4 * noise_std / math.sqrt(10_000)
    assert_close(d.noise_fn(x[:5]), torch.full((5,), noise_std))


def test_bishop_noise_std():
    d = data.bishop(10_000, noise_std=0.2, seed=4)
    x, y = _all_points(d)
    assert abs((y - data.bishop_mean(x)).std().item() / 0.2 - 1) < 0.05


@pytest.mark.parametrize("gap", [None, (1.0, 2.0)])
def test_heteroscedastic_noise_std(gap):
    d = data.heteroscedastic(10_000, noise_std=0.3, gap=gap, seed=2)
    x, y = _all_points(d)
    z = (y - d.mean_fn(x)) / d.noise_fn(x)
    assert abs(z.std().item() - 1) < 0.05
    assert abs(z.mean().item()) < 4 / math.sqrt(10_000)


def test_heteroscedastic_noise_shape():
    # sigma(x) = s (0.25 + x^2 / 4): s/4 at 0, 2.5 s at |x| = 3, average s over U(-3, 3).
    d = data.heteroscedastic(10, noise_std=0.4)
    assert_close(d.noise_fn(torch.tensor([0.0, 3.0, -3.0])), [0.1, 1.0, 1.0])
    grid = torch.linspace(-3, 3, 100_001, dtype=torch.float64)
    assert_close(d.noise_fn(grid).mean(), 0.4, atol=1e-4)
    assert d.mean_fn is data.toy_mean


def test_zero_noise_is_noise_free():
    d = data.homoscedastic(100, noise_std=0.0, seed=0)
    assert_close(d.y_train, data.toy_mean(d.x_train.squeeze(-1)), atol=0, rtol=0)


# --- gaps and ranges --------------------------------------------------------------------------


@pytest.mark.parametrize("make", [data.homoscedastic, data.heteroscedastic])
@pytest.mark.parametrize("gap", [(-1.0, 1.0), (-3.0, -2.0), (2.5, 3.0), (0.0, 0.01)])
def test_gap_has_no_inputs(make, gap):
    d = make(4000, gap=gap, seed=0)
    assert d.name.endswith("-gap")
    for x in (d.x_train, d.x_test):
        inside = (x > gap[0]) & (x < gap[1])
        assert not inside.any()
        assert ((x >= -3) & (x <= 3)).all()


def test_gap_inputs_uniform_outside_the_gap():
    # x ~ U([-3, -1] u [1, 3]): half of the points on each side, uniform within each side.
    d = data.homoscedastic(20_000, gap=(-1.0, 1.0), test_fraction=0.0, seed=0)
    x = d.x_train.squeeze(-1)
    left = (x < 0).double().mean().item()
    assert abs(left - 0.5) < 4 * math.sqrt(0.25 / 20_000)
    # Within [1, 3]: mean 2, variance 1/3.
    right = x[x > 0]
    assert abs(right.mean().item() - 2) < 0.02
    assert abs(right.var().item() - 1 / 3) < 0.02


def test_x_range_is_respected():
    d = data.homoscedastic(2000, x_range=(1.0, 2.5), seed=0)
    x = torch.cat([d.x_train, d.x_test])
    assert x.min() >= 1.0
    assert x.max() <= 2.5
    assert x.max() - x.min() > 1.4


# --- bishop branches --------------------------------------------------------------------------


def test_bishop_branches_three_roots():
    # f(x) = x + 0.3 sin(4 pi x) has a local maximum ~0.436 near x ~0.146 and a local minimum
    # ~0.064 near x ~0.354, so 0.064 < y < 0.436 has three branches.
    roots = data.bishop_branches(0.25)
    assert roots.shape == (3,)
    assert (roots.diff() > 0).all()
    assert ((roots >= 0) & (roots <= 1)).all()
    residual = data.bishop_mean(roots.double()) - 0.25
    assert residual.abs().max() < 1e-5
    assert_close(roots[1], 0.25, atol=1e-6)


@pytest.mark.parametrize("y, count", [(0.5, 1), (0.05, 1), (0.95, 1), (0.7, 3), (0.3, 3)])
def test_bishop_branches_count(y, count):
    roots = data.bishop_branches(y)
    assert roots.shape == (count,)
    assert (data.bishop_mean(roots.double()) - y).abs().max() < 1e-5


@pytest.mark.parametrize("y", [-0.1, 1.1])
def test_bishop_branches_outside_range(y):
    assert data.bishop_branches(y).shape == (0,)


def test_bishop_branches_root_on_grid_point():
    y = data.bishop_mean(torch.tensor(0.2, dtype=torch.float64)).item()
    roots = data.bishop_branches(y)
    assert (data.bishop_mean(roots.double()) - y).abs().max() < 1e-5
    assert roots.shape == (3,)


# --- 2-D densities ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", data.DENSITIES_2D)
def test_sample_2d_shape(name):
    x = data.sample_2d(name, 257, seed=0)
    assert x.shape == (257, 2)
    assert x.dtype == torch.get_default_dtype()
    assert torch.isfinite(x).all()


def _midpoint_grid(lo=-5.0, hi=5.0, k=800):
    h = (hi - lo) / k
    t = lo + h * (torch.arange(k, dtype=torch.float64) + 0.5)
    return torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1), h


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard"])
def test_log_density_2d_integrates_to_one(name):
    grid, h = _midpoint_grid()
    total = (data.log_density_2d(name, grid).exp().sum() * h * h).item()
    assert abs(total - 1) < 0.01


def test_log_density_2d_checkerboard_values():
    pts = torch.tensor([[-3.0, -3.0], [-1.0, -3.0], [1.0, 1.0], [3.5, -0.5], [4.5, 0.0]])
    expected = torch.tensor([-math.log(32), -math.inf, -math.log(32), -math.log(32), -math.inf])
    assert torch.equal(data.log_density_2d("checkerboard", pts), expected)


def test_log_density_2d_8gaussians_value_at_centre():
    # At a centre the other components are negligible: log(1/8 * 1/(2 pi s^2)), s = 0.2.
    value = data.log_density_2d("8gaussians", torch.tensor([[2.0, 0.0]], dtype=torch.float64))
    assert_close(value, [math.log(1 / (8 * 2 * math.pi * 0.04))], atol=1e-6)


def test_log_density_2d_batch_shape():
    x = torch.zeros(3, 4, 2)
    assert data.log_density_2d("8gaussians", x).shape == (3, 4)
    assert data.log_density_2d("checkerboard", x).shape == (3, 4)


def test_checkerboard_samples_in_support_and_balanced():
    x = data.sample_2d("checkerboard", 16_000, seed=1)
    assert torch.isfinite(data.log_density_2d("checkerboard", x)).all()
    i = torch.floor((x[:, 0] + 4) / 2).long()
    j = torch.floor((x[:, 1] + 4) / 2).long()
    counts = torch.bincount(4 * i + j, minlength=16).double()
    filled = counts[counts > 0]
    assert filled.numel() == 8
    # Each filled square holds 1/8 of the mass: binomial SE sqrt(n p (1 - p)) ~ 42.
    assert (filled - 2000).abs().max() < 5 * math.sqrt(16_000 / 8 * 7 / 8)


def test_8gaussians_samples_match_density():
    x = data.sample_2d("8gaussians", 20_000, seed=2)
    assert torch.isfinite(data.log_density_2d("8gaussians", x)).all()
    # Mass of the box [1, 3] x [-1, 1] under the density vs the fraction of samples in it.
    grid, h = _midpoint_grid(-1.0, 1.0, 200)
    box = grid + torch.tensor([2.0, 0.0], dtype=torch.float64)
    p = (data.log_density_2d("8gaussians", box).exp().sum() * h * h).item()
    assert 1 / 8 < p < 0.14  # one component plus the tails of its two neighbours
    in_box = ((x[:, 0] > 1) & (x[:, 0] < 3) & (x[:, 1].abs() < 1)).double().mean().item()
    assert abs(in_box - p) < 5 * math.sqrt(p * (1 - p) / 20_000)


def test_rings_radii():
    x = data.sample_2d("rings", 12_000, noise=0.0, seed=0)
    r = x.norm(dim=-1)
    rounded = r.round()
    assert_close(r, rounded, atol=1e-5)
    frac = torch.stack([(rounded == k).double().mean() for k in (1, 2, 3)])
    # Mass proportional to circumference: 1/6, 2/6, 3/6.
    assert_close(frac, [1 / 6, 2 / 6, 3 / 6], atol=0.02)


def test_moons_bounded_and_two_clusters():
    x = data.sample_2d("moons", 2000, noise=0.0, seed=0)
    assert x.abs().max() < 3
    assert_close(x.mean(0), [0.0, 0.0], atol=0.1)


@pytest.mark.parametrize("name", ["moons", "rings", "spirals"])
def test_log_density_2d_without_closed_form(name):
    with pytest.raises(ValueError, match="name"):
        data.log_density_2d(name, torch.zeros(1, 2))


def test_log_density_2d_bad_last_dim():
    with pytest.raises(ValueError, match="x must have a last dimension of size 2"):
        data.log_density_2d("8gaussians", torch.zeros(4, 3))


# --- real data --------------------------------------------------------------------------------


def test_digits():
    d = data.digits()
    assert d.name == "digits"
    assert d.num_classes == 10
    n_test = round(1797 * 0.2)
    assert d.x_train.shape == (1797 - n_test, 1, 8, 8)
    assert d.x_test.shape == (n_test, 1, 8, 8)
    assert d.y_train.shape == (1797 - n_test,)
    assert d.y_train.dtype == torch.long
    assert d.x_train.dtype == torch.get_default_dtype()
    for x in (d.x_train, d.x_test):
        assert x.min() >= 0
        assert x.max() <= 1
    assert d.x_train.max() == 1
    labels = torch.cat([d.y_train, d.y_test])
    assert labels.min() == 0
    assert labels.max() == 9
    assert torch.bincount(labels, minlength=10).min() > 150


def test_digits_flatten_same_split():
    images, flat = data.digits(seed=3), data.digits(seed=3, flatten=True)
    assert flat.x_train.shape == (images.x_train.shape[0], 64)
    assert flat.x_test.shape == (images.x_test.shape[0], 64)
    assert torch.equal(flat.x_train, images.x_train.reshape(-1, 64))
    assert torch.equal(flat.y_test, images.y_test)


def test_diabetes_shapes_and_standardizers():
    d = data.diabetes(seed=0)
    n_test = round(442 * 0.2)
    assert d.x_train.shape == (442 - n_test, 10)
    assert d.y_train.shape == (442 - n_test,)
    assert d.x_test.shape == (n_test, 10)
    assert d.y_test.shape == (n_test,)
    # The standardizers are fit on the training part only.
    assert_close(d.x_train.mean(0), torch.zeros(10), atol=1e-5)
    assert_close(d.x_train.std(0), torch.ones(10), atol=1e-5)
    assert_close(d.y_train.mean(), 0.0, atol=1e-5)
    assert_close(d.y_train.std(), 1.0, atol=1e-5)
    assert d.x_scaler.mean.shape == (10,)
    assert d.y_scaler.mean.shape == ()
    assert abs(d.y_test.mean().item()) > 1e-4  # test part is not refit


def test_diabetes_inverse_transform_round_trip():
    d = data.diabetes(seed=7)
    raw = data.diabetes(seed=7, standardize=False)
    assert raw.x_scaler is None
    assert raw.y_scaler is None
    assert_close(d.x_scaler.inverse_transform(d.x_train), raw.x_train, atol=1e-5)
    assert_close(d.x_scaler.inverse_transform(d.x_test), raw.x_test, atol=1e-5)
    assert_close(d.y_scaler.inverse_transform(d.y_test), raw.y_test, rtol=1e-5, atol=1e-3)
    assert_close(d.y_scaler.transform(raw.y_train), d.y_train, atol=1e-5)
    # Raw diabetes targets are disease progression scores in [25, 346].
    assert raw.y_train.min() >= 25
    assert raw.y_train.max() <= 346
    assert_close(d.y_scaler.inverse_scale(torch.tensor(1.0)), d.y_scaler.std)


def test_standardizer():
    values = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    s = data.Standardizer.fit(values)
    z = s.transform(values)
    assert_close(z.mean(0), torch.zeros(3), atol=1e-6)
    # The constant column gets std 1 instead of a division by zero.
    assert_close(s.std, [2.0, 1.0, values[:, 2].std().item()])
    assert_close(z[:, 1], torch.zeros(3))
    assert_close(s.inverse_transform(z), values)
    assert_close(s.inverse_scale(torch.ones(3)), s.std)


def test_standardizer_state_dict_round_trip():
    s = data.Standardizer.fit(torch.randn(20, 4) * 3 + 1)
    state = s.state_dict()
    assert set(state) == {"mean", "std"}
    restored = data.Standardizer.from_state_dict(state)
    assert torch.equal(restored.mean, s.mean)
    assert torch.equal(restored.std, s.std)
    x = torch.randn(5, 4)
    assert_close(restored.transform(x), s.transform(x))
    assert_close(restored.inverse_transform(s.transform(x)), x)
    # state_dict returns copies: changing them leaves the standardizer alone.
    copy = s.state_dict()
    copy["mean"].add_(1.0)
    copy["std"].mul_(2.0)
    assert torch.equal(s.mean, state["mean"])
    assert torch.equal(s.std, state["std"])


@pytest.mark.parametrize("values", [torch.zeros(1, 3), torch.tensor(2.0)])
def test_standardizer_needs_two_rows(values):
    with pytest.raises(ValueError, match="values"):
        data.Standardizer.fit(values)


# --- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SYNTHETIC))
@pytest.mark.parametrize("n", [0, -5])
def test_bad_n(name, n):
    with pytest.raises(ValueError, match=r"^n must be > 0"):
        SYNTHETIC[name](n=n)


@pytest.mark.parametrize("name", list(SYNTHETIC))
@pytest.mark.parametrize("n", [10.0, "10", True, None])
def test_non_int_n(name, n):
    with pytest.raises(TypeError, match=r"^n must be an int"):
        SYNTHETIC[name](n=n)


@pytest.mark.parametrize("name", list(SYNTHETIC))
@pytest.mark.parametrize("noise_std", [-0.1, float("nan")])
def test_bad_noise_std(name, noise_std):
    with pytest.raises(ValueError, match="noise_std"):
        SYNTHETIC[name](n=10, noise_std=noise_std)


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("test_fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_test_fraction(name, test_fraction):
    kwargs = {"n": 20} if name in SYNTHETIC else {}
    with pytest.raises(ValueError, match="test_fraction"):
        ALL[name](test_fraction=test_fraction, **kwargs)


def test_test_fraction_leaving_no_training_data():
    with pytest.raises(ValueError, match="test_fraction"):
        data.homoscedastic(2, test_fraction=0.9)


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("seed", [1.5, "0", None])
def test_bad_seed(name, seed):
    kwargs = {"n": 20} if name in SYNTHETIC else {}
    with pytest.raises(TypeError, match="seed"):
        ALL[name](seed=seed, **kwargs)


@pytest.mark.parametrize("make", [data.homoscedastic, data.heteroscedastic])
@pytest.mark.parametrize("gap", [(1.0, -1.0), (0.5, 0.5), (-4.0, 0.0), (2.0, 3.5)])
def test_bad_gap(make, gap):
    with pytest.raises(ValueError, match="gap"):
        make(20, gap=gap)


@pytest.mark.parametrize("make", [data.homoscedastic, data.heteroscedastic])
@pytest.mark.parametrize("x_range", [(1.0, 1.0), (2.0, -2.0)])
def test_bad_x_range(make, x_range):
    with pytest.raises(ValueError, match="x_range"):
        make(20, x_range=x_range)


def test_sample_2d_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        data.sample_2d("spirals", 10)
    with pytest.raises(ValueError, match=r"^n must be > 0"):
        data.sample_2d("moons", -1)
    with pytest.raises(TypeError, match=r"^n must be an int"):
        data.sample_2d("moons", 10.0)
    with pytest.raises(ValueError, match="noise"):
        data.sample_2d("rings", 10, noise=-1.0)
    with pytest.raises(TypeError, match="seed"):
        data.sample_2d("rings", 10, seed=0.5)
