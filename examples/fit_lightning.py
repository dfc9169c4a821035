"""Fit a Bayesian MLP by SVI with PyTorch Lightning, on one CPU or with DDP on many devices/nodes.

Examples::

    # one process (the same model and guide as bayesdl.fit)
    python examples/fit_lightning.py --epochs 50

    # distributed data parallel: 2 CPU processes over gloo on one machine
    python examples/fit_lightning.py --strategy ddp --devices 2 --epochs 50

    # 4 GPUs on each of 2 nodes (run the same command on every node; Lightning reads
    # MASTER_ADDR, MASTER_PORT, NODE_RANK from the environment, or SLURM's variables)
    python examples/fit_lightning.py --accelerator gpu --strategy ddp --devices 4 --num-nodes 2

The data are the diabetes set bundled with scikit-learn (standardized). The fitted posterior is
written as a Lightning checkpoint that ``bayesdl.io.load_posterior`` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import pyro.distributions as dist
import torch

from bayesdl import data
from bayesdl.guides import MeanFieldNormal
from bayesdl.inference.lightning import fit_lightning
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64, help="rows per batch per device")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, ...")
    parser.add_argument("--devices", default="1", help="devices (CPU processes) per node")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("bayesdl-output/lightning"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    d = data.diabetes(seed=args.seed)
    L.seed_everything(args.seed, verbose=False)
    model = BNN(
        MLP(d.x_train.shape[1], 1, hidden=(32,)),
        Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)),
        "normal",
    )
    guide = MeanFieldNormal(model)
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    module, trainer = fit_lightning(
        model,
        guide,
        d.x_train,
        d.y_train,
        batch_size=args.batch_size,
        num_epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        accelerator=args.accelerator,
        devices=devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        default_root_dir=args.output,
        enable_checkpointing=True,
    )
    if trainer.global_rank == 0:
        last = module.history.loss[-min(20, len(module.history.loss)) :]
        print(
            f"final -ELBO (mean of the last {len(last)} steps on rank 0): {sum(last) / len(last):.2f}"
        )
        print(
            f"checkpoints in {args.output / 'checkpoints'} (bayesdl.io.load_posterior reads them)"
        )
    # Lightning leaves the process group up; tearing it down lets every process exit cleanly
    # (otherwise gloo's threads can outlive the interpreter and abort it at exit).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
