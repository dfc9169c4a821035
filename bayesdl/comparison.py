"""An honest comparison of posteriors of one model: SVI guides against an HMC reference.

:func:`compare_posteriors` scores every fitted posterior of the same :class:`~bayesdl.models.BNN`
on held-out data (NLL, RMSE, CRPS, coverage), adds its cost (fit time; for MCMC, effective
samples per second and R-hat) and measures how far its predictive is from the reference's in
function space: the mean standardised distance of the predictive means and the ratios of the
predictive (total and epistemic) standard deviations. Mean-field VI's habit of under-estimating
epistemic uncertainty away from the data shows up in the epistemic ratio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from bayesdl import metrics
from bayesdl.diagnostics import convergence_summary, to_inference_data
from bayesdl.inference.mcmc import MCMCResult
from bayesdl.inference.predictive import Posterior, Prediction, predict
from bayesdl.models import BNN

__all__ = ["Fitted", "compare_posteriors", "format_table"]


@dataclass
class Fitted:
    """One fitted posterior and what it cost.

    Attributes:
        posterior: A guide, a dict of samples, or an :class:`~bayesdl.inference.mcmc.MCMCResult`.
        fit_time: Seconds spent fitting (SVI steps or sampling).
        kind: ``"svi"`` or ``"mcmc"`` (inferred when omitted).
    """

    posterior: Posterior | MCMCResult
    fit_time: float
    kind: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = "mcmc" if isinstance(self.posterior, MCMCResult) else "svi"

    def samples_or_guide(self) -> Posterior:
        return self.posterior.flat() if isinstance(self.posterior, MCMCResult) else self.posterior


def _predict(model: BNN, fitted: Fitted, x: Tensor, num_samples: int, seed: int) -> Prediction:
    post = fitted.samples_or_guide()
    n = None if isinstance(post, Mapping) and fitted.kind == "mcmc" else num_samples
    return predict(model, post, x, num_samples=n, seed=seed)


def compare_posteriors(
    model: BNN,
    fits: Mapping[str, Fitted],
    x_test: Tensor,
    y_test: Tensor,
    *,
    reference: str | None = None,
    x_eval: Tensor | None = None,
    num_samples: int = 500,
    seed: int = 0,
) -> list[dict[str, float | str]]:
    """Score several posteriors of one regression model and compare them with a reference.

    Arguments:
        model: The :class:`~bayesdl.models.BNN` (regression likelihood) they were fitted to.
        fits: ``{name: Fitted}``.
        x_test: Held-out inputs.
        y_test: Held-out targets.
        reference: Name of the reference posterior (usually NUTS); defaults to the first MCMC
            fit, if any.
        x_eval: Inputs where function-space agreement is measured (e.g. a grid spanning a gap
            in the data); defaults to ``x_test``.
        num_samples: Posterior draws per guide (MCMC uses all its draws).
        seed: Seed of the draws.

    Returns:
        One row per posterior: ``method``, ``nll``, ``rmse``, ``crps``, ``coverage_90``,
        ``fit_time_s``; for MCMC ``max_rhat``, ``min_ess_bulk``, ``ess_per_s``,
        ``divergences``; against the reference ``mean_dist`` (mean over ``x_eval`` of
        ``|mu - mu_ref| / sd_ref``), ``sd_ratio`` (mean predictive sd over mean reference sd)
        and ``epistemic_ratio`` (the same for the epistemic sd; below 1 means the method is
        more confident than the reference where it does not know).
    """
    if model.task != "regression":
        raise ValueError("compare_posteriors scores regression models; got a classifier")
    if not fits:
        raise ValueError("fits is empty: give at least one fitted posterior")
    if reference is None:
        reference = next((k for k, f in fits.items() if f.kind == "mcmc"), None)
    elif reference not in fits:
        raise ValueError(f"reference={reference!r} is not one of {list(fits)}")
    x_eval = x_test if x_eval is None else x_eval

    evals: dict[str, Prediction] = {}
    rows: list[dict[str, float | str]] = []
    for name, fitted in fits.items():
        pred = _predict(model, fitted, x_test, num_samples, seed)
        draws = pred.sample(max(1, 1000 // pred.num_samples))
        row: dict[str, float | str] = {
            "method": name,
            "nll": float(-pred.log_prob(y_test).mean()),
            "rmse": float(metrics.rmse(pred.mean, y_test)),
            "crps": float(metrics.crps_samples(draws, y_test)),
            "coverage_90": metrics.sample_coverage(draws, y_test, levels=(0.9,))[0.9],
            "fit_time_s": fitted.fit_time,
        }
        if isinstance(fitted.posterior, MCMCResult):
            # Convergence of the identifiable quantities at the test inputs (sigma and f).
            idata = to_inference_data(model, fitted.posterior, x_test, seed=seed)
            conv = convergence_summary(idata)
            row.update(
                max_rhat=conv["max_rhat"],
                min_ess_bulk=conv["min_ess_bulk"],
                ess_per_s=conv["min_ess_bulk"] / max(fitted.fit_time, 1e-9),
                divergences=float(conv["divergences"]),
            )
        row.update(fitted.extra)
        rows.append(row)
        evals[name] = _predict(model, fitted, x_eval, num_samples, seed)

    if reference is not None:
        ref = evals[reference]
        ref_sd, ref_epi = ref.total.sqrt(), ref.epistemic.sqrt()
        for row in rows:
            pred = evals[str(row["method"])]
            row["mean_dist"] = float(((pred.mean - ref.mean).abs() / ref_sd).mean())
            # Ratios of means, not means of ratios: pointwise ratios where the reference's
            # epistemic sd is tiny (on the data) would swamp the regions that matter (gaps).
            row["sd_ratio"] = float(pred.total.sqrt().mean() / ref_sd.mean())
            row["epistemic_ratio"] = float(pred.epistemic.sqrt().mean() / ref_epi.mean())
    return rows


_FORMATS = {
    "nll": "{:.3f}",
    "rmse": "{:.3f}",
    "crps": "{:.3f}",
    "coverage_90": "{:.2f}",
    "fit_time_s": "{:.1f}",
    "max_rhat": "{:.3f}",
    "min_ess_bulk": "{:.0f}",
    "ess_per_s": "{:.2f}",
    "divergences": "{:.0f}",
    "mean_dist": "{:.2f}",
    "sd_ratio": "{:.2f}",
    "epistemic_ratio": "{:.2f}",
}


def format_table(rows: Sequence[Mapping[str, float | str]]) -> str:
    """Plain-text table with aligned columns; missing entries print as ``-``."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]

    def cell(row: Mapping[str, float | str], col: str) -> str:
        value = row.get(col)
        if value is None:
            return "-"
        if isinstance(value, str):
            return value
        if value != value:  # NaN
            return "-"
        return _FORMATS.get(col, "{:.4g}").format(value)

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(
        c.rjust(w) if i else c.ljust(w)
        for i, (c, w) in enumerate(zip(columns, widths, strict=True))
    )
    body = [
        "  ".join(
            v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    return "\n".join([line, "-" * len(line), *body])
