"""SVI under PyTorch Lightning: one process against ``fit``, checkpoints, and DDP over 2 processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

pytest.importorskip("lightning")

from bayesdl import data, fit
from bayesdl.guides import MeanFieldNormal
from bayesdl.inference import predict
from bayesdl.inference.lightning import SVIModule, fit_lightning
from bayesdl.inference.svi import scale_data_plate
from bayesdl.io import load_posterior
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP
from tests.common import assert_close
from tests.ddp_fit import FIRST_STEP_SEED, problem

HERE = Path(__file__).resolve().parent


def _make(seed: int = 0) -> tuple[BNN, MeanFieldNormal]:
    torch.manual_seed(seed)
    model = BNN(MLP(1, 1, hidden=(16,)), Homoscedastic(0.2, learn=False), "normal")
    return model, MeanFieldNormal(model)


def test_one_process_lightning_reaches_the_elbo_of_fit_and_its_checkpoint_loads(tmp_path):
    d = data.homoscedastic(512, seed=0)
    model, guide = _make()
    history = fit(
        model, guide, d.x_train, d.y_train, num_steps=400, batch_size=64, seed=0, progress=False
    )
    pyro.clear_param_store()
    model2, guide2 = _make()
    module, _ = fit_lightning(
        model2,
        guide2,
        d.x_train,
        d.y_train,
        batch_size=64,
        num_epochs=62,  # 7 batches per epoch: 434 steps
        seed=0,
        progress=False,
        default_root_dir=tmp_path,
        enable_checkpointing=True,
    )
    # Final ELBOs (mean of the last 50 steps) within noise: the step-to-step sd is ~10 nats.
    ours = sum(history.loss[-50:]) / 50
    theirs = sum(module.history.loss[-50:]) / 50
    assert abs(ours - theirs) < 15, (ours, theirs)
    # Lightning's checkpoint is readable by the package's loader (weights_only=True).
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    expected = predict(model2, guide2, d.x_test, num_samples=50, seed=0).mean
    pyro.clear_param_store()
    model3, guide3 = _make(seed=1)  # another initialisation: everything comes from the file
    load_posterior(ckpt, model3, guide3)
    assert_close(
        predict(model3, guide3, d.x_test, num_samples=50, seed=0).mean, expected, atol=0, rtol=0
    )


def test_bayesian_weight_templates_are_frozen_and_guide_parameters_exist_before_training():
    x, y, model, guide = problem()
    module = SVIModule(model, guide, num_data=len(x), example_batch=(x[:4], y[:4]))
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("guide.") for n in trainable)
    assert not any(p.requires_grad for p in model.net.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_data": 0}, ValueError, "num_data"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"loss": "elbo"}, TypeError, "loss"),
        ({"example_batch": ([1.0],)}, TypeError, "example_batch"),
    ],
)
def test_svi_module_refuses_bad_arguments(kwargs, error, match):
    x, y, model, guide = problem()
    args = {"num_data": len(x), "example_batch": (x[:4], y[:4]), **kwargs}
    with pytest.raises(error, match=match):
        SVIModule(model, guide, **args)


@pytest.mark.slow
def test_ddp_over_two_gloo_processes_matches_one_process(tmp_path):
    epochs = 200
    done = subprocess.run(
        [sys.executable, str(HERE / "ddp_fit.py"), str(tmp_path), str(epochs)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ddp_grads = torch.load(tmp_path / "grads.pt", weights_only=True)
    result = torch.load(tmp_path / "result.pt", weights_only=True)

    # One process, full batch, the same draws from the guide: the averaged DDP gradient of the
    # two half-batches (each scaled by N / B = 2) is the full-batch gradient.
    pyro.clear_param_store()
    x, y, model, guide = problem()
    module = SVIModule(model, guide, num_data=len(x), example_batch=(x, y), lr=1e-2)
    optim = module.configure_optimizers()
    for step in range(epochs):
        pyro.set_rng_seed(FIRST_STEP_SEED + step)
        optim.zero_grad()
        with scale_data_plate(1.0):
            loss = Trace_ELBO().differentiable_loss(model, guide, x, y)
        loss.backward()
        if step == 0:
            grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
            assert set(grads) == set(ddp_grads)
            for name, g in grads.items():
                assert_close(ddp_grads[name], g, atol=1e-5, rtol=1e-5, msg=name)
        optim.step()
    # Both ranks draw the same weights at every step, so DDP training follows the full-batch
    # run; only the order of floating-point sums differs.
    for name, p in guide.named_parameters():
        assert_close(result["params"][name], p.detach(), atol=1e-3, rtol=1e-3, msg=name)
    assert len(result["loss"]) == epochs


def test_a_divergent_step_restores_the_last_finite_parameters(tmp_path):
    import lightning as L

    from bayesdl.inference.svi import TrainingDivergedError

    x, y, model, guide = problem()
    module = SVIModule(
        model,
        guide,
        num_data=len(x),
        example_batch=(x, y),
        optimizer=lambda params: torch.optim.SGD(params, lr=float("inf")),
    )
    before = {n: p.detach().clone() for n, p in guide.named_parameters()}
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    with pytest.raises(TrainingDivergedError):
        trainer.fit(module, loader)
    for name, p in guide.named_parameters():
        assert torch.isfinite(p).all(), name
        assert_close(p.detach(), before[name], atol=0, rtol=0, msg=name)


def test_a_posterior_saved_without_targets_loads(tmp_path):
    # Density models have no targets: the file keeps example_target=None and must still load.
    from bayesdl.io import save_posterior

    x, y, model, guide = problem()
    SVIModule(model, guide, num_data=len(x), example_batch=(x, y))
    save_posterior(tmp_path / "p.pt", model, guide, example_input=x, example_target=None)
    _, _, model2, guide2 = problem()
    assert load_posterior(tmp_path / "p.pt", model2, guide2) is guide2
    # For this regression model the rebuilt guide treats 'obs' as latent: predict says so.
    with pytest.raises(ValueError, match="treats 'obs' as latent"):
        predict(model2, guide2, x[:3])
