"""Tests of :mod:`bayesdl.plots`: every figure draws on small inputs under the Agg backend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes

from bayesdl import plots
from bayesdl.inference import History


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def xs(n=30):
    return torch.linspace(-2, 2, n)[torch.randperm(n)]  # unsorted on purpose


def test_plot_predictive_band():
    x = xs()
    mean, std = torch.sin(x), 0.1 + 0.05 * x.abs()
    ax = plots.plot_predictive_band(
        x.unsqueeze(-1),
        mean,
        std,
        x_train=torch.randn(20),
        y_train=np.random.default_rng(0).normal(size=20),
        true_mean=torch.sin,
        label="model",
        color="tab:green",
    )
    assert isinstance(ax, Axes)
    line = ax.get_lines()[0]
    assert np.all(np.diff(line.get_xdata()) >= 0)  # sorted internally
    assert line.get_label() == "model"
    assert len(ax.collections) == 3  # scatter + two bands
    # Drawing on a given Axes returns it; a true mean given as values works too.
    _, given = plt.subplots()
    assert plots.plot_predictive_band(x, mean, std, ax=given, true_mean=torch.sin(x)) is given
    assert plots.plot_predictive_band([0.0, 1.0], [0.0, 1.0], [0.1, 0.1]) is not None


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mean": torch.zeros(5)}, ValueError, "mean"),
        ({"std": -torch.ones(30)}, ValueError, "std"),
        ({"x": torch.zeros(30, 2)}, ValueError, "x"),
        ({"x_train": torch.zeros(3)}, ValueError, "y_train"),
        ({"x": "abc"}, TypeError, "x"),
    ],
)
def test_plot_predictive_band_rejects_bad_inputs(kwargs, error, match):
    args = {"x": xs(), "mean": torch.zeros(30), "std": torch.ones(30), **kwargs}
    with pytest.raises(error, match=match):
        plots.plot_predictive_band(**args)


def test_plot_uncertainty_split():
    x = xs()
    ax = plots.plot_uncertainty_split(
        x, 0.2 * torch.ones(30), x.abs(), true_noise=lambda v: 0 * v + 0.2
    )
    assert isinstance(ax, Axes)
    assert [line.get_label() for line in ax.get_lines()] == [
        "aleatoric",
        "epistemic",
        "total",
        "true noise",
    ]
    total = ax.get_lines()[2].get_ydata()
    order = np.argsort(x.numpy())
    expected = np.sqrt(0.04 + x.numpy()[order] ** 2)
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    # Either part may be left out (a point estimate has no epistemic part).
    assert len(plots.plot_uncertainty_split(x, torch.ones(30), None).get_lines()) == 1
    with pytest.raises(ValueError, match="aleatoric_std, epistemic_std"):
        plots.plot_uncertainty_split(x, None, None)
    with pytest.raises(ValueError, match="epistemic_std"):
        plots.plot_uncertainty_split(x, torch.ones(30), -torch.ones(30))


def test_plot_conditional_density():
    def log_prob(x, y):
        assert x.shape == (400, 1) and y.shape == (400,)
        return torch.distributions.Normal(x[:, 0], 0.3).log_prob(y)

    data = (torch.rand(10), torch.rand(10))
    ax = plots.plot_conditional_density(log_prob, (-1, 1), (-2, 2), data=data, resolution=20)
    assert isinstance(ax, Axes)
    image = ax.get_images()[0]
    assert image.get_array().shape == (20, 20)
    assert ax.get_xlim() == (-1, 1) and ax.get_ylim() == (-2, 2)
    # The density peaks on the diagonal y = x in every column.
    peaks = np.argmax(image.get_array(), axis=0)
    assert np.all(np.abs(np.linspace(-2, 2, 20)[peaks] - np.linspace(-1, 1, 20)) < 0.25)
    with pytest.raises(ValueError, match="x_range"):
        plots.plot_conditional_density(log_prob, (1, -1), (-2, 2), resolution=20)
    with pytest.raises(ValueError, match="resolution"):
        plots.plot_conditional_density(log_prob, (-1, 1), (-2, 2), resolution=1)
    with pytest.raises(ValueError, match="one value per point"):
        plots.plot_conditional_density(lambda x, y: y[:3], (-1, 1), (-2, 2), resolution=20)
    with pytest.raises(TypeError, match="callable"):
        plots.plot_conditional_density(None, (-1, 1), (-2, 2))


def test_plot_mixture_weights():
    x = xs()
    weights = torch.softmax(torch.randn(30, 3), -1)
    ax = plots.plot_mixture_weights(x, weights)
    assert isinstance(ax, Axes)
    assert len(ax.collections) == 3
    assert ax.get_ylim() == (0, 1)
    with pytest.raises(ValueError, match="weights"):
        plots.plot_mixture_weights(x, torch.ones(30, 3))
    with pytest.raises(ValueError, match="weights"):
        plots.plot_mixture_weights(x, torch.ones(10, 1))


def test_plot_calibration():
    expected = torch.linspace(0.05, 0.95, 19)
    ax = plots.plot_calibration(expected, expected**1.5, label="model A")
    assert isinstance(ax, Axes)
    again = plots.plot_calibration(expected.numpy(), expected.numpy(), ax=ax, label="model B")
    assert again is ax
    assert len(ax.get_lines()) == 3  # one diagonal, two curves
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["model A", "model B"]
    with pytest.raises(ValueError, match="observed"):
        plots.plot_calibration(expected, expected + 1)
    with pytest.raises(ValueError, match="observed"):
        plots.plot_calibration(expected, expected[:3])


@pytest.mark.parametrize("steps", [1, 10, 120])
def test_plot_loss(steps):
    history = History(loss=[100.0 / (i + 1) for i in range(steps)])
    ax = plots.plot_loss(history, window=50)
    assert isinstance(ax, Axes)
    raw, smooth = ax.get_lines()
    assert len(raw.get_xdata()) == steps
    assert len(smooth.get_xdata()) == len(history.smoothed(50))
    assert smooth.get_xdata()[-1] == steps


def test_plot_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="no steps"):
        plots.plot_loss(History())
    with pytest.raises(TypeError, match="History"):
        plots.plot_loss([1.0, 2.0])


def test_importing_plots_selects_no_backend():
    import subprocess
    import sys

    code = "import sys; import bayesdl.plots; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
