"""One SVI training loop for any Pyro model and guide: minibatches, progress, NaN safety."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.optim import PyroOptim
from pyro.poutine.messenger import Messenger
from torch import Tensor
from tqdm.auto import tqdm

from bayesdl._validation import check_finite, check_positive, check_same_length, check_tensor

__all__ = ["History", "TrainingDivergedError", "fit", "scale_data_plate"]


class TrainingDivergedError(FloatingPointError):
    """Raised when the loss or the parameters stop being finite.

    The parameter store is rolled back to the parameters the failing step started from (the
    last update whose result was finite everywhere); parameters first created in the failing
    step are removed. ``history`` holds the losses of the completed steps.
    """

    def __init__(self, step: int, loss: float, history: History) -> None:
        super().__init__(
            f"non-finite loss or parameters at step {step} (loss={loss}); training stopped and "
            "the last finite parameters were restored in the param store. Try a smaller learning "
            "rate, a smaller initial guide scale or standardized data."
        )
        self.step = step
        self.loss = loss
        self.history = history


@dataclass
class History:
    """What a call to :func:`fit` did.

    Attributes:
        loss: ELBO loss (negative ELBO estimate, at full-data scale) of every completed step.
        wall_time: Seconds spent in the loop.
        interrupted: True if a KeyboardInterrupt ended training early.
        batch_size: Minibatch size used (the data size for full-batch training).
    """

    loss: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    interrupted: bool = False
    batch_size: int = 0

    @property
    def num_steps(self) -> int:
        return len(self.loss)

    def smoothed(self, window: int = 50) -> Tensor:
        """Running mean of the loss over ``window`` steps, for plots and convergence checks."""
        check_positive("window", window, integer=True)
        loss = torch.tensor(self.loss, dtype=torch.float64)
        if loss.numel() < window:
            return loss.cumsum(0) / torch.arange(1, loss.numel() + 1)
        kernel = torch.ones(1, 1, window, dtype=torch.float64) / window
        return torch.nn.functional.conv1d(loss.view(1, 1, -1), kernel).flatten()


class scale_data_plate(Messenger):
    """Effect handler that multiplies the log-density of every site inside the plate named
    ``plate`` by ``scale``.

    Running a model on a minibatch of ``B`` out of ``N`` points under
    ``scale_data_plate(N / B)`` makes the ELBO estimate unbiased for the full-data ELBO while
    global sites (priors on weights) keep scale 1. Wrap the guide too when it has local sites in
    that plate.
    """

    def __init__(self, scale: float, plate: str = "data") -> None:
        super().__init__()
        self.scale = scale
        self.plate = plate

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and any(f.name == self.plate for f in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.scale


def _empty_guide(*args: Any, **kwargs: Any) -> None:
    """Guide of a model without latent sites: the ELBO is then the log-likelihood."""


def _to_device(module: Any, device: torch.device | None) -> None:
    if device is not None and isinstance(module, torch.nn.Module):
        module.to(device)


def fit(
    model: Callable[..., Any],
    guide: Callable[..., Any] | None,
    x: Tensor,
    y: Tensor | None = None,
    *,
    num_steps: int = 1000,
    batch_size: int | None = None,
    lr: float = 1e-2,
    optim: PyroOptim | None = None,
    loss: ELBO | None = None,
    seed: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> History:
    """Fit ``guide`` to the posterior of ``model`` by stochastic variational inference.

    The model is called as ``model(x_batch, y_batch)`` and must put its observation site in a
    ``pyro.plate("data", ...)`` over the rows it is given. With ``batch_size < N`` every step
    draws a minibatch (epoch-wise shuffling, fixed batch size) and scales the sites inside the
    data plate by ``N / batch_size``, so the loss is an unbiased estimate of the full-data
    negative ELBO (Hoffman et al., 2013). Parameters live in Pyro's global param store.

    Arguments:
        model: Pyro model ``model(x, y=None)``.
        guide: Pyro guide with the model's signature, or ``None`` for a model without latent
            sites (maximum likelihood: the loss is then the negative log-likelihood).
        x: Inputs with a leading data dimension.
        y: Targets with the same leading dimension (``None`` for density models of ``x``).
        num_steps: Number of optimisation steps.
        batch_size: Minibatch size, or ``None`` for full-batch steps.
        lr: Learning rate of the default Adam optimiser (ignored when ``optim`` is given).
        optim: Any Pyro optimiser; defaults to ``pyro.optim.Adam({"lr": lr})``.
        loss: Any Pyro ELBO; defaults to ``Trace_ELBO()``.
        seed: Seed for Pyro, torch and numpy; ``None`` leaves the global state alone.
        progress: Show a tqdm bar with the running loss.
        device: Move data (and ``model``/``guide`` if they are modules) to this device; by
            default everything stays where it is.

    Returns:
        A :class:`History` of the losses. A KeyboardInterrupt ends the loop cleanly and returns
        the history so far with ``interrupted=True``.

    Raises:
        ValueError: Empty data, a length mismatch, NaN/Inf in the data, or bad sizes.
        TrainingDivergedError: The loss or a parameter became NaN/Inf; the step is named and the
            last finite parameters are restored.

    References:
        Hoffman, M. D., Blei, D. M., Wang, C., & Paisley, J. (2013). Stochastic variational
        inference. JMLR, 14, 1303-1347.

        Blundell, C., Cornebise, J., Kavukcuoglu, K., & Wierstra, D. (2015). Weight uncertainty in
        neural networks. ICML.
    """
    check_tensor("x", x)
    tensors = {"x": x} if y is None else {"x": x, "y": check_tensor("y", y)}
    n = check_same_length(**tensors)
    for name, value in tensors.items():
        check_finite(name, value)
    check_positive("num_steps", num_steps, integer=True)
    if batch_size is None:
        batch_size = n
    check_positive("batch_size", batch_size, integer=True)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the number of data points ({n})")
    check_positive("lr", lr)

    if device is not None:
        device = torch.device(device)
        x = x.to(device)
        y = None if y is None else y.to(device)
        _to_device(model, device)
        _to_device(guide, device)
    if seed is not None:
        pyro.set_rng_seed(seed)

    guide = _empty_guide if guide is None else guide
    scale = n / batch_size
    if batch_size < n:
        run_model = scale_data_plate(scale)(model)
        run_guide = scale_data_plate(scale)(guide)
    else:
        run_model, run_guide = model, guide
    svi = SVI(
        run_model,
        run_guide,
        optim if optim is not None else pyro.optim.Adam({"lr": lr}),
        loss if loss is not None else Trace_ELBO(),
    )

    order = torch.randperm(n, device=x.device)
    cursor = 0

    def next_batch() -> tuple[Tensor, Tensor | None]:
        nonlocal order, cursor
        if batch_size == n:
            return x, y
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, device=x.device), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        return x[idx], None if y is None else y[idx]

    history = History(batch_size=batch_size)
    # Create lazily initialised parameters (autoguides, pyro.module) before the first update,
    # so that a failure at step 1 can still restore finite initial values.
    svi.evaluate_loss(*next_batch())
    store = pyro.get_param_store()
    params = [p for _, p in store.named_parameters()]
    if not params:
        raise ValueError("the model and guide have no parameters to fit")
    snapshot = [p.detach().clone() for p in params]

    start = time.perf_counter()
    refresh = max(1, num_steps // 200)
    bar = tqdm(range(1, num_steps + 1), desc="SVI", disable=not progress, leave=False)
    try:
        for step in bar:
            value = svi.step(*next_batch())
            grown = len(store) != len(params)  # a site created a new parameter mid-fit
            current = [p for _, p in store.named_parameters()] if grown else params
            with torch.no_grad():
                finite = math.isfinite(value) and bool(
                    torch.isfinite(torch.stack(torch._foreach_norm(current))).all()
                )
                if not finite:
                    torch._foreach_copy_(params, snapshot)
                    if grown:  # parameters born in the failing step have no finite past
                        known = {id(p) for p in params}
                        for name in [n for n, p in store.named_parameters() if id(p) not in known]:
                            del store[name]
                    history.wall_time = time.perf_counter() - start
                    raise TrainingDivergedError(step, value, history)
                if grown:
                    params, snapshot = current, [p.detach().clone() for p in current]
                else:
                    torch._foreach_copy_(snapshot, params)
            history.loss.append(value)
            if step % refresh == 0:
                bar.set_postfix(loss=f"{value:.4g}", refresh=False)
    except KeyboardInterrupt:
        history.interrupted = True
    finally:
        bar.close()
    history.wall_time = time.perf_counter() - start
    return history
