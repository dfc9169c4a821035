"""The ``bayesdl`` command line: the lecture's experiments on embedded data.

Each subcommand fits models on data that ship with the package (seeded synthetic sets or
scikit-learn's bundled sets), prints a results table and writes figures to an output folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import bayesdl

__all__ = ["EXPERIMENTS", "build_parser", "main"]

#: Experiments of ``bayesdl run NAME``.
EXPERIMENTS = ("adversarial", "flows", "infinite")


def _add_common(parser: argparse.ArgumentParser, default_output: str, writes: str) -> None:
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(default_output),
        help=f"folder for {writes} (default: {default_output})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny iteration counts, for smoke runs and CI"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayesdl`` command."""
    parser = argparse.ArgumentParser(
        prog="bayesdl",
        description="Uncertainty in deep learning with Pyro: the lecture's experiments.",
    )
    parser.add_argument("--version", action="version", version=f"bayesdl {bayesdl.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    compare = sub.add_parser(
        "compare",
        help="SVI (mean-field, low-rank, MC dropout) vs HMC (NUTS) on a Bayesian neural network",
        description=(
            "Fit one Bayesian MLP by mean-field SVI (Bayes by backprop), low-rank SVI and NUTS, "
            "then print a table of test NLL, RMSE, CRPS, 90% coverage, fit time, ESS/s, R-hat "
            "and agreement with HMC, and write a figure and ArviZ InferenceData (netCDF)."
        ),
    )
    compare.add_argument(
        "--data",
        choices=("toy", "diabetes"),
        default="toy",
        help="toy: 1-D regression with a gap in the inputs; diabetes: scikit-learn's set",
    )
    _add_common(compare, "bayesdl-output", "the figure, results.json, InferenceData and posteriors")

    aleatoric = sub.add_parser(
        "aleatoric",
        help="homoscedastic vs heteroscedastic regression, and an MDN on Bishop's flipped problem",
        description=(
            "Fit a homoscedastic and a heteroscedastic Gaussian network and a mixture density "
            "network, print test NLL, RMSE, CRPS and 90% coverage, and write the figures."
        ),
    )
    _add_common(aleatoric, "bayesdl-output/aleatoric", "the figures and results.json")

    run = sub.add_parser(
        "run",
        help=(
            "run a named experiment (adversarial: attacks, defences and detection on digits; "
            "flows: normalizing flows on the embedded 2-D densities; infinite: wide networks "
            "and their Gaussian-process limit)"
        ),
        description=(
            "Run one of the lecture's experiments by name. adversarial: train an MLP, its "
            "defences (noise augmentation, adversarial training, a denoiser, randomized "
            "smoothing) and two Bayesian MLPs on digits, and print accuracy under FGSM/PGD, "
            "certified accuracy, and how well entropy and mutual information detect attacks. "
            "flows: fit every normalizing-flow "
            "family to the embedded 2-D densities, print the test NLL per dataset and family "
            "(with the gap to the true entropy where it is known) and write a figure. "
            "infinite: reproduce Neal's Figure 2.2, print how the prior's kurtosis, one "
            "network's kernel and the NUTS posterior of finite BNNs approach the Gaussian "
            "process as the width grows, and write the figures."
        ),
    )
    run.add_argument("experiment", choices=EXPERIMENTS, help="the experiment to run")
    _add_common(run, "bayesdl-output/EXPERIMENT", "the figures and results.json")
    run.set_defaults(output=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayesdl`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "compare":
        from bayesdl.experiments.compare import run_compare

        run_compare(
            data=args.data,
            output=args.output,
            seed=args.seed,
            quick=args.quick,
            progress=not args.no_progress,
        )
    elif args.command == "aleatoric":
        from bayesdl.experiments.aleatoric import run_aleatoric

        run_aleatoric(
            output=args.output, seed=args.seed, quick=args.quick, progress=not args.no_progress
        )
    elif args.command == "run":
        output = args.output or Path("bayesdl-output") / args.experiment
        if args.experiment == "adversarial":
            from bayesdl.experiments.adversarial import run_adversarial as run_experiment
        elif args.experiment == "flows":
            from bayesdl.experiments.flows import run_flows as run_experiment
        else:
            from bayesdl.experiments.infinite import run_infinite as run_experiment
        run_experiment(
            output=output, seed=args.seed, quick=args.quick, progress=not args.no_progress
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
