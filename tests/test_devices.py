"""The core runs on the device of its inputs, and every tensor it returns stays there.

Each test runs on the CPU (always) and on CUDA (marked ``cuda``: skipped without a GPU). The CPU
case checks the same code paths end to end; the device assertions bite on CUDA, where a tensor
created on the CPU behind the user's back raises or comes back on the wrong device.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from bayesdl.adversarial import pgd
from bayesdl.distributions.flows import Flow
from bayesdl.guides import DropoutGuide, MeanFieldNormal
from bayesdl.inference import fit, predict
from bayesdl.infinite import ErfKernel
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _on(device: str, *tensors: torch.Tensor) -> None:
    want = torch.device(device).type
    for t in tensors:
        assert isinstance(t, torch.Tensor)
        assert t.device.type == want, (t.shape, t.device)


def _data(device: str, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, generator=gen) * 4 - 2
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(n, generator=gen)
    return x.to(device), y.to(device)


def _bnn() -> BNN:
    torch.manual_seed(0)
    return BNN(MLP(1, 1, hidden=(8,)), Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)), "normal")


@pytest.mark.parametrize("device", DEVICES)
def test_meanfield_fit_and_predict_stay_on_the_device(device):
    x, y = _data("cpu")
    model = _bnn()
    guide = MeanFieldNormal(model)
    history = fit(model, guide, x, y, num_steps=20, lr=1e-2, seed=0, progress=False, device=device)
    assert len(history.loss) == 20
    _on(device, *(p for _, p in model.named_parameters()), *pyro.get_param_store().values())
    x_dev, y_dev = _data(device)
    pred = predict(model, guide, x_dev, num_samples=7, seed=0)
    _on(device, pred.output, *pred.params.values(), pred.distribution.sample())
    _on(device, pred.distribution.log_prob(y_dev))
    assert pred.output.shape == (7, 40, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_guide_on_the_device(device):
    x, y = _data(device)
    model = _bnn().to(device)
    guide = DropoutGuide(model, p=0.2)
    fit(model, guide, x, y, num_steps=10, lr=1e-2, seed=0, progress=False, device=device)
    _on(device, *pyro.get_param_store().values())
    pred = predict(model, guide, x, num_samples=5, seed=0)
    _on(device, pred.output, *pred.params.values())


@pytest.mark.parametrize("device", DEVICES)
def test_flow_log_prob_and_sample_on_the_device(device):
    flow = Flow(2, "nsf", num_layers=2, hidden=(8,)).to(device)
    points = torch.randn(16, 2, device=device)
    log_p = flow.log_prob(points)
    draws = flow.sample((5,))
    _on(device, log_p, draws)
    assert log_p.shape == (16,) and draws.shape == (5, 2)
    assert bool(torch.isfinite(log_p).all())


@pytest.mark.parametrize("device", DEVICES)
def test_pgd_on_a_model_on_the_device(device):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).to(device)
    x = torch.rand(10, 4, device=device)
    labels = torch.randint(0, 3, (10,), device=device)
    res = pgd(net, x, labels, 0.1, num_steps=3, seed=0)
    tensors = [v for v in vars(res).values() if isinstance(v, torch.Tensor)]
    assert tensors
    _on(device, *tensors)
    assert float((res.x_adv - x).abs().max()) <= 0.1 + 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_nngp_kernel_matrix_on_the_device(device):
    kernel = ErfKernel(2).to(device)
    x = torch.randn(6, 2, device=device)
    z = torch.randn(4, 2, device=device)
    k_xx, k_xz, diag = kernel(x), kernel(x, z), kernel(x, diag=True)
    _on(device, k_xx, k_xz, diag)
    assert k_xx.shape == (6, 6) and k_xz.shape == (6, 4) and diag.shape == (6,)
    torch.testing.assert_close(torch.diagonal(k_xx), diag)
