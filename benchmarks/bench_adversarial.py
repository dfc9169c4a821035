"""Adversarial examples on digits: PGD steps on 1,000 digits, and certification by smoothing.

``pgd_digits`` (one unit = one PGD step on 1,000 digits of 64 pixels, MLP 64-128-10):

* baseline: a hand-written L-infinity PGD step in plain torch (forward, backward, sign step,
  projection, clamp): the floor for one step;
* :func:`bayesdl.adversarial.pgd` with 10 steps, timed per step (validation, the eval-mode switch
  and the result's final forward included);
* the same on :class:`bayesdl.adversarial.ModelAverage` of an MC-dropout BNN with 10 fresh
  posterior samples per step (expectation over transformation).

``certify_smoothing`` (one unit = certifying 100 digits with n0 = 100 and n = 10,000 noise
draws each, i.e. 1.01 million forward rows): :meth:`SmoothedClassifier.certify` with batches of
1,000 noisy inputs (the default, baseline) and of 10,000.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from _timing import Benchmark, Prepared, Variant

from bayesdl.adversarial import ModelAverage, SmoothedClassifier, pgd
from bayesdl.data import digits
from bayesdl.nn import MLP

N_ATTACK, N_CERTIFY, STEPS = 1_000, 100, 10


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = digits(seed=0, flatten=True)
    return d.x_train[:n], d.y_train[:n]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP(64, 10, hidden=(128,), activation="relu").eval()


def _hand_pgd() -> Prepared:
    net, (x, y) = _net(), _data(N_ATTACK)
    eps, alpha = 0.1, 0.025

    def run(k: int) -> None:
        delta = torch.zeros_like(x)
        for _ in range(k):
            delta.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(net(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
            delta = ((x + delta).clamp(0, 1) - x).detach()

    return Prepared(run)


def _package_pgd(model_average: bool) -> Any:
    def setup() -> Prepared:
        x, y = _data(N_ATTACK)
        model: Any = _net()
        if model_average:
            from bayesdl.guides import DropoutGuide
            from bayesdl.likelihoods import Categorical
            from bayesdl.models import BNN

            pyro.clear_param_store()
            bnn = BNN(MLP(64, 10, hidden=(128,), activation="relu"), Categorical(10), "normal")
            guide = DropoutGuide(bnn, p=0.2)
            guide(x, y)  # set the guide up from the model with its data (as a fit step would)
            model = ModelAverage(bnn, guide, num_samples=10)

        def run(k: int) -> None:
            # Whole 10-step attacks; the timed blocks are multiples of 10 steps (the "first
            # unit" column then shows one whole attack).
            for _ in range(max(1, k // STEPS)):
                pgd(model, x, y, 0.1, num_steps=STEPS, seed=0)

        return Prepared(run)

    return setup


def _certify(batch_size: int) -> Any:
    def setup() -> Prepared:
        smoothed = SmoothedClassifier(_net(), 0.25, 10)
        x, _ = _data(N_CERTIFY)

        def run(k: int) -> None:
            for _ in range(k):
                smoothed.certify(x, n0=100, n=10_000, batch_size=batch_size, seed=0)

        return Prepared(run)

    return setup


PGD_BASELINE = "hand-written PGD step (plain torch)"
CERTIFY_BASELINE = "certify, batches of 1,000"

BENCHMARKS = [
    Benchmark(
        name="pgd_digits",
        variants=[
            Variant(PGD_BASELINE, _hand_pgd),
            Variant("bayesdl pgd, 10 steps (per step)", _package_pgd(False)),
            Variant("pgd on ModelAverage, MC dropout T=10 (per step)", _package_pgd(True)),
        ],
        baseline=PGD_BASELINE,
        unit="step",
        block=STEPS,
        rounds=11,
        quick_block=STEPS,
        quick_rounds=3,
        budget_s=40.0,
        quick_budget_s=8.0,
        min_rounds=5,
        description=f"one L-inf PGD step on {N_ATTACK:,} digits (64 pixels), MLP 64-128-10",
    ),
    Benchmark(
        name="certify_smoothing",
        variants=[
            Variant(CERTIFY_BASELINE, _certify(1_000)),
            Variant("certify, batches of 10,000", _certify(10_000)),
        ],
        baseline=CERTIFY_BASELINE,
        unit="call",
        block=1,
        rounds=7,
        quick_block=1,
        quick_rounds=3,
        budget_s=60.0,
        quick_budget_s=10.0,
        min_rounds=3,
        description=(
            f"randomized smoothing: certify {N_CERTIFY} digits with n0=100, n=10,000 draws each"
        ),
    ),
]
