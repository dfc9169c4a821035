"""``bayesdl run adversarial``: attacks, defences and detection by uncertainty on digits.

On scikit-learn's 8 x 8 digits (pixels in ``[0, 1]``), the run trains:

- an undefended MLP;
- the same MLP trained with Gaussian-noise augmentation;
- the same MLP with PGD adversarial training;
- the undefended MLP behind a denoising autoencoder;
- the Gaussian smoothing of the noise-trained MLP;
- two Bayesian MLPs, MC dropout and mean-field SVI.

It then prints:

- a robustness table: accuracy against ``eps`` under FGSM and PGD. Every attack is white-box and
  adaptive: through the denoiser, and on the Bayesian model average with fresh posterior samples
  at every step;
- the certified accuracy of smoothing against the L2 radius;
- the ROC AUC of entropy and mutual information as detectors of PGD examples crafted on the
  undefended MLP (transfer), on each model itself, and on each model with an objective that
  also lowers the detector's score (detector-aware, Carlini & Wagner 2017);
- the linearity demonstration.

It also writes figures and ``results.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from bayesdl import data as datasets
from bayesdl.adversarial import (
    Denoised,
    DenoisingAutoencoder,
    ModelAverage,
    SmoothedClassifier,
    accuracy,
    certified_accuracy,
    detection_scores,
    detector_aware_loss,
    fgsm,
    linearity_demo,
    pgd,
    roc_auc,
    train_classifier,
    train_denoiser,
)
from bayesdl.experiments._common import check_run, format_rows, pick_settings
from bayesdl.experiments.aleatoric import single_thread

__all__ = ["QUICK", "SETTINGS", "Settings", "run_adversarial"]


@dataclass(frozen=True)
class Settings:
    """Sizes of ``bayesdl run adversarial``.

    Attributes:
        hidden: Hidden widths of every classifier (an MLP on the 64 pixels).
        num_epochs: Epochs of the plain, noise-augmented and adversarially trained MLPs.
        lr: Their Adam learning rate.
        noise_std: Noise of the augmentation, and of the smoothing's base classifier.
        train_eps: L-infinity budget of adversarial training (PGD-7).
        eps_grid: Budgets of the robustness curves.
        attack_steps: PGD steps of the evaluation attacks (step ``2.5 eps / steps``).
        denoiser_epochs: Epochs of the denoising autoencoder.
        denoiser_eps: Budget of the adversarial examples it is trained on.
        sigma: Noise of randomized smoothing.
        n0: Smoothing's selection draws.
        n: Smoothing's estimation draws.
        alpha: Smoothing's failure probability.
        num_certify: Test digits certified.
        radius_grid: Radii of the certified-accuracy curve.
        dropout: Dropout rate of the MC-dropout BNN.
        svi_steps: SVI steps of each Bayesian MLP.
        svi_lr: Their learning rate.
        num_samples: Posterior samples of the Bayesian predictives.
        eot_samples: Posterior samples per attack step on a model average.
        detect_eps: Budget of the PGD examples of the detection table.
    """

    hidden: tuple[int, ...] = (128,)
    num_epochs: int = 30
    lr: float = 3e-3
    noise_std: float = 0.25
    train_eps: float = 0.2
    eps_grid: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
    attack_steps: int = 20
    denoiser_epochs: int = 50
    denoiser_eps: float = 0.1
    sigma: float = 0.25
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    num_certify: int = 200
    radius_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0)
    dropout: float = 0.2
    svi_steps: int = 3000
    svi_lr: float = 3e-3
    num_samples: int = 50
    eot_samples: int = 10
    detect_eps: float = 0.1


#: The full run (a few minutes on two cores).
SETTINGS = Settings()

#: Smoke runs and CI (seconds).
QUICK = replace(
    SETTINGS,
    hidden=(32,),
    num_epochs=3,
    eps_grid=(0.0, 0.1, 0.2),
    attack_steps=3,
    denoiser_epochs=2,
    n0=20,
    n=200,
    num_certify=30,
    radius_grid=(0.0, 0.25, 0.5),
    svi_steps=30,
    num_samples=8,
    eot_samples=2,
)

#: The models of the robustness table, in its order.
MODELS = ("undefended", "noise", "adversarial", "denoised", "mc-dropout", "mean-field")


def _mlp(hidden: tuple[int, ...], seed: int) -> nn.Module:
    from bayesdl.nn import MLP

    torch.manual_seed(seed)
    return MLP(64, 10, hidden=hidden, activation="relu")


def _bayesian(
    kind: str, d: datasets.ClassificationData, settings: Settings, seed: int, progress: bool
) -> ModelAverage:
    from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

    from bayesdl.guides import DropoutGuide, MeanFieldNormal
    from bayesdl.inference import fit
    from bayesdl.likelihoods import Categorical
    from bayesdl.models import BNN
    from bayesdl.nn import MLP

    torch.manual_seed(seed)
    model = BNN(
        MLP(64, 10, hidden=settings.hidden, activation="relu"),
        Categorical(10),
        "normal",
        name=kind,
    )
    if kind == "mc-dropout":
        guide: Any = DropoutGuide(model, p=settings.dropout)
        loss: Any = Trace_ELBO()
    else:
        guide = MeanFieldNormal(model)
        loss = TraceMeanField_ELBO()
    fit(
        model,
        guide,
        d.x_train,
        d.y_train,
        num_steps=settings.svi_steps,
        batch_size=128,
        lr=settings.svi_lr,
        loss=loss,
        seed=seed,
        progress=progress,
    )
    return ModelAverage(model, guide, num_samples=settings.eot_samples)


def _probs(model: nn.Module | ModelAverage, x: Tensor, settings: Settings, seed: int) -> Tensor:
    """Per-sample class probabilities ``(S, N, C)``: one sample for a plain network."""
    if isinstance(model, ModelAverage):
        from bayesdl.inference import predict

        pred = predict(model.model, model.posterior, x, num_samples=settings.num_samples, seed=seed)
        return pred.params["probs"]
    with torch.no_grad():
        return model(x).softmax(-1).unsqueeze(0)


def _predictive_accuracy(
    model: nn.Module | ModelAverage, x: Tensor, y: Tensor, settings: Settings, seed: int
) -> float:
    probs = _probs(model, x, settings, seed).mean(0)
    return float((probs.argmax(-1) == y).float().mean())


def run_adversarial(
    output: Path | str,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    *,
    settings: Settings | None = None,
    figures: bool = True,
    dpi: int = 100,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the models, attack them, certify the smoothed one, and score the detectors.

    Arguments:
        output: Folder for the figures and ``results.json`` (created if missing).
        seed: Seed of the split, every initialisation, fit and attack.
        quick: Tiny sizes (:data:`QUICK`).
        progress: Show progress bars.
        settings: Override the settings.
        figures: Write the figures.
        dpi: Figure resolution.
        echo: Where the tables go.

    Returns:
        The content of ``results.json``: settings, clean accuracies, the robustness rows
        (``model``, ``attack``, ``eps``, ``accuracy``), the certified-accuracy curve, the
        detection rows (``model``, ``attack_on``, ``score``, ``success_rate`` among the digits
        the model classifies correctly when clean, ``auc`` over all adversarial inputs,
        ``auc_successful`` over those that fooled it) and the linearity rows.
    """
    output = check_run(output, seed, dpi)
    settings = pick_settings(settings, quick, SETTINGS, QUICK)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    s = settings

    with single_thread():
        d = datasets.digits(seed=seed, flatten=True)
        x, y = d.x_test, d.y_test
        train = {
            "num_epochs": s.num_epochs,
            "lr": s.lr,
            "seed": seed,
            "progress": progress,
        }
        models: dict[str, Any] = {}
        models["undefended"] = _mlp(s.hidden, seed)
        train_classifier(models["undefended"], d.x_train, d.y_train, **train)
        models["noise"] = _mlp(s.hidden, seed)
        train_classifier(models["noise"], d.x_train, d.y_train, noise_std=s.noise_std, **train)
        models["adversarial"] = _mlp(s.hidden, seed)
        train_classifier(
            models["adversarial"],
            d.x_train,
            d.y_train,
            adversary="pgd",
            eps=s.train_eps,
            **train,
        )
        torch.manual_seed(seed)
        denoiser = DenoisingAutoencoder((64,))
        train_denoiser(
            denoiser,
            d.x_train,
            y=d.y_train,
            classifier=models["undefended"],
            eps=s.denoiser_eps,
            num_epochs=s.denoiser_epochs,
            seed=seed,
            progress=progress,
        )
        models["denoised"] = Denoised(denoiser, models["undefended"])
        pyro.clear_param_store()
        models["mc-dropout"] = _bayesian("mc-dropout", d, s, seed, progress)
        models["mean-field"] = _bayesian("mean-field", d, s, seed, progress)

        clean = {name: _predictive_accuracy(m, x, y, s, seed) for name, m in models.items()}
        robustness = []
        adversarial_inputs: dict[str, Tensor] = {}
        for name, model in models.items():
            for eps in s.eps_grid:
                for attack in ("fgsm", "pgd"):
                    pyro.set_rng_seed(seed)
                    if attack == "fgsm":
                        res = fgsm(model, x, y, eps)
                    else:
                        res = pgd(model, x, y, eps, num_steps=s.attack_steps, seed=seed)
                    if attack == "pgd" and eps == s.detect_eps:
                        adversarial_inputs[name] = res.x_adv
                    robustness.append(
                        {
                            "model": name,
                            "attack": attack,
                            "eps": float(eps),
                            "accuracy": _predictive_accuracy(model, res.x_adv, y, s, seed),
                        }
                    )

        # Detection: clean test digits against PGD examples at detect_eps, crafted on the
        # undefended MLP (transfer), on the model itself (adaptive, on the model average), or on
        # the model with an objective that also hides from the detector (detector-aware).
        if s.detect_eps not in s.eps_grid:
            for name in ("undefended", "mc-dropout", "mean-field"):
                pyro.set_rng_seed(seed)
                adversarial_inputs[name] = pgd(
                    models[name], x, y, s.detect_eps, num_steps=s.attack_steps, seed=seed
                ).x_adv
        detection = []
        for name in ("undefended", "mc-dropout", "mean-field"):
            clean_probs = _probs(models[name], x, s, seed)
            scores_clean = detection_scores(clean_probs)
            correct = clean_probs.mean(0).argmax(-1) == y
            for score in ("entropy", "mutual_information"):
                if name == "undefended" and score == "mutual_information":
                    continue  # zero for a deterministic network
                sources = {"transfer": adversarial_inputs["undefended"]}
                if name == "undefended":
                    sources = {"itself": adversarial_inputs["undefended"]}
                else:
                    sources["itself"] = adversarial_inputs[name]
                    pyro.set_rng_seed(seed)
                    # An attack that also lowers this very score (Carlini & Wagner, 2017).
                    sources["detector-aware"] = pgd(
                        models[name],
                        x,
                        y,
                        s.detect_eps,
                        num_steps=s.attack_steps,
                        seed=seed,
                        loss=detector_aware_loss(models[name], score=score),
                    ).x_adv
                for attack_on, x_adv in sources.items():
                    probs = _probs(models[name], x_adv, s, seed)
                    scores_adv = detection_scores(probs)[score]
                    # Fooled: classified correctly when clean, wrongly once attacked.
                    fooled = correct & (probs.mean(0).argmax(-1) != y)
                    detection.append(
                        {
                            "model": name,
                            "attack_on": attack_on,
                            "score": score,
                            "success_rate": float(fooled.sum() / correct.sum().clamp_min(1)),
                            "auc": roc_auc(scores_clean[score], scores_adv),
                            # Only the attacks that worked need detecting.
                            "auc_successful": roc_auc(scores_clean[score], scores_adv[fooled])
                            if bool(fooled.any())
                            else float("nan"),
                        }
                    )

        # Randomized smoothing of a base network trained on unclamped noise of the same sigma.
        base = _mlp(s.hidden, seed)
        train_classifier(base, d.x_train, d.y_train, noise_std=s.sigma, domain=None, **train)
        smoothed = SmoothedClassifier(base, s.sigma, 10)
        xc, yc = x[: s.num_certify], y[: s.num_certify]
        labels, radii = smoothed.certify(
            xc, n0=s.n0, n=s.n, alpha=s.alpha, seed=seed, progress=progress
        )
        # PREDICT with a tenth of CERTIFY's draws (Cohen et al. use fewer draws to predict).
        predicted = smoothed.predict(
            xc, num_draws=max(s.n // 10, s.n0), alpha=s.alpha, seed=seed + 1
        )
        curve = certified_accuracy(labels, radii, yc, list(s.radius_grid))
        certified = {
            "radius": list(s.radius_grid),
            "certified_accuracy": curve.tolist(),
            "smoothed_accuracy": float((predicted == yc).float().mean()),
            "abstain_rate": float((labels == -1).float().mean()),
            "base_accuracy": accuracy(base, xc, yc),
        }
        linearity = linearity_demo((10, 100, 1_000, 10_000), eps=0.01, seed=seed)

        written = []
        if figures:
            written = _figures(output, models, x, y, robustness, certified, s, seed, dpi)
    elapsed = time.perf_counter() - start

    echo("Clean test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in clean.items()))
    echo("\nAccuracy under attack (L-inf; every attack white-box and adaptive):")
    pivot = []
    for name in models:
        for attack in ("fgsm", "pgd"):
            row: dict[str, Any] = {"model": name, "attack": attack}
            for r in robustness:
                if r["model"] == name and r["attack"] == attack:
                    row[f"eps={r['eps']:g}"] = r["accuracy"]
            pivot.append(row)
    echo(format_rows(pivot, list(pivot[0]), ".3f"))
    echo(
        f"\nRandomized smoothing (sigma {s.sigma}, n {s.n}, alpha {s.alpha}, "
        f"{s.num_certify} digits): smoothed accuracy {certified['smoothed_accuracy']:.3f}, "
        f"abstains {certified['abstain_rate']:.3f}"
    )
    echo(
        format_rows(
            [
                {"radius": r, "certified_accuracy": a}
                for r, a in zip(certified["radius"], certified["certified_accuracy"], strict=True)
            ],
            ("radius", "certified_accuracy"),
            ".3f",
        )
    )
    echo(f"\nDetection ROC AUC, clean vs PGD (eps {s.detect_eps}) digits:")
    echo(
        format_rows(
            detection,
            ("model", "attack_on", "score", "success_rate", "auc", "auc_successful"),
            ".3f",
        )
    )
    echo("\nLinearity: the score change of r = eps sign(w) is eps ||w||_1 = eps m n:")
    echo(format_rows(linearity, ("dim", "change", "eps_l1", "max_abs_r"), ".3f"))
    echo(f"\ntook {elapsed:.1f} s; figures and results.json in {output}")
    results = {
        "settings": asdict(settings),
        "seed": seed,
        "quick": quick,
        "clean_accuracy": clean,
        "robustness": robustness,
        "certified": certified,
        "detection": detection,
        "linearity": linearity,
        "seconds": elapsed,
        "figures": written,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _figures(
    output: Path,
    models: dict[str, Any],
    x: Tensor,
    y: Tensor,
    robustness: list[dict[str, Any]],
    certified: dict[str, Any],
    s: Settings,
    seed: int,
    dpi: int,
) -> list[str]:
    # The object-oriented API: no pyplot, so a caller's backend (e.g. a notebook's) is untouched.
    from matplotlib.figure import Figure

    from bayesdl.adversarial.plots import plot_adversarial_triples, plot_robustness

    fig = Figure(figsize=(11, 4), layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    plot_robustness(robustness, ax=ax1)
    ax2.plot(certified["radius"], certified["certified_accuracy"], "o-")
    ax2.set_xlabel("L2 radius")
    ax2.set_ylabel("certified accuracy")
    ax2.set_title(f"randomized smoothing, sigma = {s.sigma}")
    ax2.set_ylim(0, 1)
    fig.savefig(output / "robustness.png", dpi=dpi)

    # The lecture's "pig -> airliner": a targeted PGD attack on the undefended MLP.
    net = models["undefended"]
    target = (y[:4] + 1) % 10
    res = pgd(net, x[:4], y[:4], 0.2, num_steps=max(s.attack_steps, 40), target=target, seed=seed)
    fig = Figure(figsize=(7, 8), layout="tight")
    plot_adversarial_triples(x[:4], res.x_adv, y[:4], res.pred, fig.subplots(4, 3), target=target)
    fig.savefig(output / "triples.png", dpi=dpi)
    return ["robustness.png", "triples.png"]
