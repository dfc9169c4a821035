"""SVI of a small BNN under DDP with 2 CPU processes (gloo); run by tests/test_lightning.py.

Usage: ``python tests/ddp_fit.py OUT_DIR [NUM_EPOCHS]``. Lightning's ``ddp`` strategy starts the
second process by re-running this script. Rank 0 writes to ``OUT_DIR``:

- ``grads.pt``: the gradients after the first backward, which DDP has averaged over the ranks;
- ``result.pt``: the final guide parameters and the loss history.

Both ranks reseed Pyro to ``FIRST_STEP_SEED + step`` before every batch, so they draw the same
weights from the guide, and the averaged gradients (and the whole trajectory) can be checked
against full-batch steps in one process. (Lightning's data loaders draw from the global RNG at
every epoch, so without the reseed the draws would drift apart from a plain loop's.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pyro
import torch

from bayesdl import data
from bayesdl.guides import MeanFieldNormal
from bayesdl.inference.lightning import SVIModule
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP

N = 256
FIRST_STEP_SEED = 123


def problem() -> tuple[torch.Tensor, torch.Tensor, BNN, MeanFieldNormal]:
    """The data, a fresh model and its guide (the same in every process)."""
    d = data.homoscedastic(N, test_fraction=0.5, seed=0)
    torch.manual_seed(0)
    model = BNN(MLP(1, 1, hidden=(16,)), Homoscedastic(0.2, learn=False), "normal")
    return d.x_train, d.y_train, model, MeanFieldNormal(model)


class FirstStep(L.Callback):
    """Reseed before every batch; save the DDP-averaged gradients of the first step."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        pyro.set_rng_seed(FIRST_STEP_SEED + trainer.global_step)

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if trainer.global_step == 0 and trainer.global_rank == 0:
            grads = {
                n: p.grad.detach().clone()
                for n, p in module.named_parameters()
                if p.grad is not None
            }
            torch.save(grads, self.out / "grads.pt")


def main() -> None:
    out = Path(sys.argv[1])
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    x, y, model, guide = problem()
    module = SVIModule(model, guide, num_data=len(x), example_batch=(x, y), lr=1e-2)
    # Each of the 2 ranks gets half of the rows (DistributedSampler) in one batch per epoch.
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=len(x) // 2, shuffle=False
    )
    trainer = L.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FirstStep(out)],
    )
    trainer.fit(module, loader)
    if trainer.global_rank == 0:
        params = {n: p.detach().clone() for n, p in guide.named_parameters()}
        torch.save({"params": params, "loss": module.history.loss}, out / "result.pt")
    # Without this, gloo's threads can outlive the interpreter: "terminate called without an
    # active exception" and exit status 134 after a successful run (1 in ~8 runs here).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
