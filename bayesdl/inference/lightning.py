"""SVI under PyTorch Lightning: the same model and guide on many devices, processes or nodes.

:class:`SVIModule` wraps any bayesdl model and guide as a ``LightningModule``. A
``lightning.Trainer`` then trains it with any strategy: one CPU, several GPUs, or distributed data
parallel (DDP) over processes and nodes. :func:`fit_lightning` builds the data loader and the
trainer for the common case. The parts that make data-parallel SVI correct:

- **Likelihood scaling per rank.** Every rank draws its own minibatch of ``B`` rows and scales
  the data plate by ``N / B`` (:class:`~bayesdl.inference.svi.scale_data_plate`), so each rank's
  loss is an unbiased estimate of the full-data negative ELBO. DDP averages the ranks'
  gradients, and an average of unbiased estimates is unbiased. The KL (prior) terms enter every
  rank's loss once and survive the average once.
- **Guide parameters first.** An autoguide creates its parameters on its first call. The module
  runs the guide on an example batch in its constructor, before a strategy wraps it, so DDP sees
  and synchronises every parameter from the start.
- **No gradient-less parameters.** A Bayesian weight of a :class:`~bayesdl.models.BNN` is a
  sample site: the network's own tensor for it is only a template and gets no gradient. It is
  frozen, so DDP does not wait for gradients that never come.
- **Checkpoints the package can read.** Lightning's checkpoints carry the package's posterior
  format under the key ``"bayesdl"``, and :func:`bayesdl.io.load_posterior` reads a ``.ckpt``
  file directly (with ``weights_only=True``).

Lightning is an optional dependency: ``pip install 'bayesdl[distributed]'``.

References:
    Hoffman, M. D., Blei, D. M., Wang, C., & Paisley, J. (2013). Stochastic variational
    inference. JMLR, 14, 1303-1347.

    Li, S., et al. (2020). PyTorch Distributed: experiences on accelerating data parallel
    training. VLDB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor, nn

try:
    import lightning as L
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "bayesdl.inference.lightning needs the optional dependency 'lightning': "
        "pip install 'bayesdl[distributed]'"
    ) from err

from bayesdl._validation import check_positive, check_tensor
from bayesdl.inference.svi import History, TrainingDivergedError, scale_data_plate

__all__ = ["SVIModule", "fit_lightning"]


def _split(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and 1 <= len(batch) <= 2:
        return batch[0], (batch[1] if len(batch) == 2 else None)
    raise ValueError(
        "a batch must be x, (x,) or (x, y) tensors; got "
        f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}"
    )


class SVIModule(L.LightningModule):
    """A bayesdl model and guide, trained by SVI as a ``LightningModule``.

    Arguments:
        model: A Pyro model ``model(x, y=None)`` with its observations in ``pyro.plate("data")``
            (e.g. a :class:`~bayesdl.models.BNN`).
        guide: Its guide (any autoguide, :class:`~bayesdl.guides.MeanFieldNormal`,
            :class:`~bayesdl.guides.DropoutGuide`...).
        num_data: The size ``N`` of the whole training set, over all ranks.
        example_batch: ``(x, y)`` rows of the training data, to create the guide's parameters
            before training (``y`` must be observed, or the guide would treat it as latent).
        loss: The ELBO (default ``pyro.infer.Trace_ELBO()``).
        lr: Adam's learning rate.
        optimizer: Alternatively, a callable ``optimizer(parameters) -> torch.optim.Optimizer``.
        seed: If given, each rank seeds Pyro with ``seed + rank`` when training starts, so the
            ranks draw different weights from the guide and their average has less noise.
            (Lightning's ``seed_everything`` alone gives every rank the same draws.)

    If the loss is not finite on any rank, every rank raises
    :class:`~bayesdl.inference.svi.TrainingDivergedError` before the optimiser steps (so no rank
    waits for the others' gradients); if an optimiser step makes a parameter non-finite, the
    parameters of the step before are restored and the same error is raised.

    Attributes:
        history: Training losses (negative ELBO at full-data scale) of this rank, per step.
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        *,
        num_data: int,
        example_batch: tuple[Tensor, Tensor] | Sequence[Tensor],
        loss: ELBO | None = None,
        lr: float = 1e-2,
        optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not isinstance(guide, nn.Module):
            raise TypeError("model and guide must be torch modules (a BNN and a Pyro guide)")
        check_positive("num_data", num_data, integer=True)
        check_positive("lr", lr)
        if loss is not None and not isinstance(loss, ELBO):
            raise TypeError(f"loss must be a pyro.infer.ELBO, got {type(loss).__name__}")
        x, y = _split(tuple(example_batch))
        check_tensor("example_batch x", x)
        self.model = model
        self.guide = guide
        self.num_data = int(num_data)
        self.loss_fn = loss if loss is not None else Trace_ELBO()
        self.lr = float(lr)
        self.optimizer_factory = optimizer
        self._example = (x[:1].detach().clone(), None if y is None else y[:1].detach().clone())
        # Create the guide's parameters now, before a strategy wraps (and broadcasts) the module.
        with torch.no_grad():
            guide(x, y)
        # A BNN's Bayesian weights are sample sites; the network's tensors for them are templates.
        for name in getattr(model, "bayesian_names", ()):
            model.net.get_parameter(name).requires_grad_(False)
        self.history = History(batch_size=int(x.shape[0]))
        self.seed = seed
        self._snapshot: list[Tensor] = []

    def _trainable(self) -> list[Tensor]:
        return [p for p in self.parameters() if p.requires_grad]

    def on_fit_start(self) -> None:
        if self.seed is not None:
            import pyro

            pyro.set_rng_seed(int(self.seed) + self.global_rank)

    def _all_ranks_agree(self, ok: bool) -> bool:
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return ok
        # Every rank must take the same branch, or the others would wait in the all-reduce.
        return bool(trainer.strategy.reduce_boolean_decision(ok, all=True))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = _split(batch)
        self._snapshot = [p.detach().clone() for p in self._trainable()]
        try:
            with scale_data_plate(self.num_data / x.shape[0]):
                loss = self.loss_fn.differentiable_loss(self.model, self.guide, x, y)
            value = float(loss.detach())
        except ValueError:  # distribution validation on non-finite values
            loss, value = None, float("nan")
        if not self._all_ranks_agree(math.isfinite(value)):
            # Raised before the optimiser steps: the parameters are those of the last good step.
            raise TrainingDivergedError(len(self.history.loss) + 1, value, self.history)
        assert loss is not None
        self.history.loss.append(value)
        self.log("elbo", -value, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(x))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        finite = all(bool(torch.isfinite(p).all()) for p in self._trainable())
        if not self._all_ranks_agree(finite):
            with torch.no_grad():
                for p, old in zip(self._trainable(), self._snapshot, strict=True):
                    p.copy_(old)
            value = self.history.loss[-1] if self.history.loss else float("nan")
            raise TrainingDivergedError(len(self.history.loss), value, self.history)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        return torch.optim.Adam(params, lr=self.lr)

    def posterior_payload(self) -> dict[str, Any]:
        """The package's posterior format for the current guide (see :mod:`bayesdl.io`)."""
        from bayesdl.io import posterior_payload

        x, y = self._example
        return posterior_payload(self.model, self.guide, example_input=x, example_target=y)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["bayesdl"] = self.posterior_payload()


def fit_lightning(
    model: nn.Module,
    guide: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    batch_size: int = 128,
    num_epochs: int = 10,
    lr: float = 1e-2,
    loss: ELBO | None = None,
    seed: int = 0,
    accelerator: str = "cpu",
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    progress: bool = True,
    **trainer_kwargs: Any,
) -> tuple[SVIModule, L.Trainer]:
    """Fit ``guide`` to ``model`` with a Lightning ``Trainer``: the distributed ``bayesdl.fit``.

    The data are wrapped in a shuffled ``DataLoader``; under a data-parallel strategy Lightning
    gives each rank a disjoint shard (``DistributedSampler``), and every rank's batches are
    scaled to the full ``N = len(x)``.

    Arguments:
        model: A Pyro model ``model(x, y=None)`` that is a torch module holding its point
            parameters (e.g. a :class:`~bayesdl.models.BNN`).
        guide: Its guide, a torch module (any autoguide).
        x: Training inputs ``(N, ...)``.
        y: Training targets ``(N,)``; ``None`` for a module that models ``x`` alone.
        batch_size: Rows per batch on each rank.
        num_epochs: Passes over the data.
        lr: Adam's learning rate.
        loss: The ELBO (default ``Trace_ELBO``).
        seed: Seed of ``lightning.seed_everything`` (the same on every rank, so every rank builds
            the same initial parameters); Pyro's draws are then seeded ``seed + rank``.
        accelerator: ``"cpu"``, ``"gpu"``, ``"auto"``...
        devices: Devices (or processes on CPU) per node.
        strategy: ``"auto"``, ``"ddp"``, ``"ddp_spawn"``, ``"ddp_fork"``...
        num_nodes: Machines.
        progress: Show Lightning's progress bar.
        **trainer_kwargs: Other ``lightning.Trainer`` arguments (``default_root_dir``,
            ``callbacks``, ``logger``...).

    Returns:
        The trained :class:`SVIModule` and the ``Trainer``. Under a multi-process strategy,
        end the script with ``torch.distributed.destroy_process_group()``: Lightning leaves the
        process group up, and gloo's threads can otherwise abort the interpreter at exit.
    """
    x = check_tensor("x", x)
    if y is not None:
        y = check_tensor("y", y)
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}"
            )
    check_positive("batch_size", batch_size, integer=True)
    check_positive("num_epochs", num_epochs, integer=True)
    L.seed_everything(seed, verbose=False)
    tensors = (x,) if y is None else (x, y)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*tensors), batch_size=batch_size, shuffle=True
    )
    module = SVIModule(
        model,
        guide,
        num_data=x.shape[0],
        example_batch=tuple(t[:batch_size] for t in tensors),
        loss=loss,
        lr=lr,
        seed=seed,
    )
    trainer_kwargs.setdefault("logger", False)
    trainer_kwargs.setdefault("enable_checkpointing", False)
    trainer_kwargs.setdefault("enable_model_summary", False)
    trainer = L.Trainer(
        max_epochs=num_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        enable_progress_bar=progress,
        **trainer_kwargs,
    )
    trainer.fit(module, loader)
    return module, trainer
