"""One SVI training loop for any Pyro model and guide: minibatches, progress, NaN safety.

:func:`fit` takes the data either as whole tensors ``x``, ``y`` (it then draws shuffled minibatches
itself) or as a ``torch.utils.data.DataLoader`` or any other re-iterable of ``(x_batch, y_batch)``
batches together with the data size ``num_data``. The second form keeps memory independent of the
data size: batches may be read from disk or generated on the fly, one at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.optim import PyroOptim
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.utils.data import DataLoader
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


def _is_jit_elbo(loss: ELBO | None) -> bool:
    """Whether ``loss`` is one of Pyro's JIT-compiled ELBOs (they fix shapes and scales)."""
    return loss is not None and any(
        c.__module__.startswith("pyro.") and c.__name__.startswith("Jit")
        for c in type(loss).__mro__
    )


def _is_batch_source(x: Any, num_data: Any) -> bool:
    """Whether ``fit`` should read ``x`` as an iterable of batches rather than as a tensor."""
    if isinstance(x, DataLoader):
        return True
    if isinstance(x, (Tensor, str, bytes)) or hasattr(x, "__array__"):
        return False
    return num_data is not None and isinstance(x, Iterable)


def _unpack_batch(
    batch: Any, index: int, device: torch.device | None
) -> tuple[Tensor, Tensor | None, int]:
    """``(x_batch, y_batch, rows)`` of one batch of an iterable, checked and on ``device``."""
    if isinstance(batch, Tensor):
        xb, yb = batch, None
    elif isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        xb, yb = batch[0], batch[1] if len(batch) == 2 else None
    else:
        kind = (
            f"{type(batch).__name__} of length {len(batch)}"
            if isinstance(batch, (tuple, list))
            else type(batch).__name__
        )
        raise TypeError(
            f"batch {index} of x must be a tensor x_batch or a pair (x_batch, y_batch), got {kind}"
        )
    tensors = {f"x of batch {index}": check_tensor(f"x of batch {index}", xb)}
    if yb is not None:
        tensors[f"y of batch {index}"] = check_tensor(f"y of batch {index}", yb)
    rows = check_same_length(**tensors)
    for name, value in tensors.items():
        check_finite(name, value)
    if device is not None:
        xb = xb.to(device)
        yb = None if yb is None else yb.to(device)
    return xb, yb, rows


def fit(
    model: Callable[..., Any],
    guide: Callable[..., Any] | None,
    x: Tensor | Iterable[Any],
    y: Tensor | None = None,
    *,
    num_steps: int = 1000,
    batch_size: int | None = None,
    num_data: int | None = None,
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

    Data that should not be held in memory at once can come as batches instead: ``x`` a
    ``torch.utils.data.DataLoader`` or any re-iterable (an object whose ``iter()`` starts a new
    pass; not a one-shot iterator or generator) of ``(x_batch, y_batch)`` pairs, or of
    ``x_batch`` tensors (or 1-tuples, as a ``DataLoader`` over a one-tensor ``TensorDataset``
    yields) for density models, with ``y=None`` and ``num_data`` the full data size ``N``. Step
    ``k`` takes the ``k``-th batch, starting a new pass over ``x`` when one ends (shuffling, if
    any, is the loader's), moves it to ``device`` and scales the data plate by ``N / B_k`` for a
    batch of ``B_k`` rows, so batches of unequal size (a short last batch) keep the estimate
    unbiased. Only one batch is held at a time: memory does not grow with ``N``. The first batch
    also creates the lazily initialised parameters, so step 1 runs on the first batch of the
    first pass and a pass of ``m`` batches is exactly ``m`` steps. With a JIT ELBO (e.g.
    :class:`~bayesdl.inference.JitTraceMeanField_ELBO`), which compiles the shapes and the scale
    of its first call, every batch must have the same number of rows (``drop_last=True``).

    Arguments:
        model: Pyro model ``model(x, y=None)``.
        guide: Pyro guide with the model's signature, or ``None`` for a model without latent
            sites (maximum likelihood: the loss is then the negative log-likelihood).
        x: Inputs with a leading data dimension; or a ``DataLoader`` or other re-iterable of
            batches (see above).
        y: Targets with the same leading dimension (``None`` for density models of ``x``, and
            when ``x`` is an iterable of batches, which carry their own targets).
        num_steps: Number of optimisation steps.
        batch_size: Minibatch size, or ``None`` for full-batch steps. Tensors only: a loader
            sets its own batch size.
        num_data: Number of data points ``N`` that the batches of an iterable ``x`` are drawn
            from (the likelihood is scaled by ``N / B``). Required for an iterable, except a
            ``DataLoader`` over a dataset with ``len()``, for which it defaults to
            ``len(x.dataset)``. With tensors it may be left out or must equal ``len(x)``.
        lr: Learning rate of the default Adam optimiser (ignored when ``optim`` is given).
        optim: Any Pyro optimiser; defaults to ``pyro.optim.Adam({"lr": lr})``.
        loss: Any Pyro ELBO; defaults to ``Trace_ELBO()``.
        seed: Seed for Pyro, torch and numpy; ``None`` leaves the global state alone. It is set
            before the first pass over an iterable starts, so a ``DataLoader`` that shuffles
            with torch's global generator shuffles reproducibly.
        progress: Show a tqdm bar with the running loss.
        device: Move data (and ``model``/``guide`` if they are modules) to this device; by
            default everything stays where it is. Batches of an iterable are moved one by one.

    Returns:
        A :class:`History` of the losses. A KeyboardInterrupt ends the loop cleanly and returns
        the history so far with ``interrupted=True``. For an iterable, ``batch_size`` is the
        number of rows of its first batch.

    Raises:
        ValueError: Empty data, a length mismatch, NaN/Inf in the data, or bad sizes. For an
            iterable: ``y`` or ``batch_size`` given, ``num_data`` missing or not positive, an
            iterable that yields no batches (at the start or when a new pass starts), a batch
            with more rows than ``num_data`` or NaN/Inf values, or batches of unequal size with
            a JIT ELBO.
        TypeError: ``x`` neither a tensor nor an iterable of batches (an iterable without
            ``num_data`` counts as neither), a one-shot iterator, a non-integer ``num_data``,
            or a batch that is not a tensor or a pair of tensors.
        TrainingDivergedError: The loss or a parameter became NaN/Inf; the step is named and the
            last finite parameters are restored.

    References:
        Hoffman, M. D., Blei, D. M., Wang, C., & Paisley, J. (2013). Stochastic variational
        inference. JMLR, 14, 1303-1347.

        Blundell, C., Cornebise, J., Kavukcuoglu, K., & Wierstra, D. (2015). Weight uncertainty in
        neural networks. ICML.
    """
    if _is_batch_source(x, num_data):
        return _fit_batches(
            model,
            guide,
            x,
            y,
            num_steps=num_steps,
            batch_size=batch_size,
            num_data=num_data,
            lr=lr,
            optim=optim,
            loss=loss,
            seed=seed,
            progress=progress,
            device=device,
        )
    if not isinstance(x, Tensor) and isinstance(x, Iterable) and not hasattr(x, "__array__"):
        raise TypeError(
            f"x must be a torch.Tensor, got {type(x).__name__}; to fit from an iterable of "
            "batches pass num_data=<number of data points> (it defaults to len(x.dataset) only "
            "for a DataLoader)"
        )
    check_tensor("x", x)
    tensors = {"x": x} if y is None else {"x": x, "y": check_tensor("y", y)}
    n = check_same_length(**tensors)
    for name, value in tensors.items():
        check_finite(name, value)
    if num_data is not None:
        check_positive("num_data", num_data, integer=True)
        if num_data != n:
            raise ValueError(f"num_data={num_data} differs from the number of rows of x ({n})")
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

    # Create lazily initialised parameters (autoguides, pyro.module) before the first update,
    # so that a failure at step 1 can still restore finite initial values.
    svi.evaluate_loss(*next_batch())
    return _run(svi, next_batch, num_steps, History(batch_size=batch_size), progress)


def _fit_batches(
    model: Callable[..., Any],
    guide: Callable[..., Any] | None,
    x: Iterable[Any],
    y: Any,
    *,
    num_steps: int,
    batch_size: int | None,
    num_data: int | None,
    lr: float,
    optim: PyroOptim | None,
    loss: ELBO | None,
    seed: int | None,
    progress: bool,
    device: str | torch.device | None,
) -> History:
    """:func:`fit` on a ``DataLoader`` or another re-iterable of batches."""
    kind = type(x).__name__
    if y is not None:
        raise ValueError(
            f"y must be None when x is a {kind} of batches: the batches carry the targets, "
            "as (x_batch, y_batch) pairs"
        )
    if batch_size is not None:
        raise ValueError(
            f"batch_size must be None when x is a {kind} of batches: the batches set their size "
            "(e.g. DataLoader(..., batch_size=B))"
        )
    if isinstance(x, Iterator):
        raise TypeError(
            f"x is a one-shot iterator ({kind}) that cannot start a new pass; pass a re-iterable "
            "such as a DataLoader, a list of batches or an IterableDataset in a DataLoader"
        )
    if num_data is None:
        try:
            num_data = len(x.dataset)  # type: ignore[attr-defined, arg-type]
        except TypeError:
            raise ValueError(
                "num_data (the number of data points N the batches are drawn from) is required: "
                "the DataLoader's dataset has no len()"
            ) from None
        if num_data == 0:
            raise ValueError("x is an empty DataLoader: its dataset has no rows")
    check_positive("num_data", num_data, integer=True)
    check_positive("num_steps", num_steps, integer=True)
    check_positive("lr", lr)
    jit = _is_jit_elbo(loss)

    if device is not None:
        device = torch.device(device)
        _to_device(model, device)
        _to_device(guide, device)
    if seed is not None:
        pyro.set_rng_seed(seed)

    guide = _empty_guide if guide is None else guide
    # One scaler per program, its scale set to N / B before every step.
    model_scaler, guide_scaler = scale_data_plate(1.0), scale_data_plate(1.0)
    svi = SVI(
        model_scaler(model),
        guide_scaler(guide),
        optim if optim is not None else pyro.optim.Adam({"lr": lr}),
        loss if loss is not None else Trace_ELBO(),
    )

    iterator = iter(x)
    in_pass = 0  # batches taken from the current pass
    taken = 0  # batches taken in all
    first_rows = 0

    def take() -> Any:
        nonlocal iterator, in_pass
        try:
            return next(iterator)
        except StopIteration:
            if in_pass == 0:
                where = "" if taken == 0 else " when a new pass started (is it re-iterable?)"
                raise ValueError(f"x ({kind}) yielded no batches{where}") from None
        iterator, in_pass = iter(x), 0
        return take()

    def next_batch() -> tuple[Tensor, Tensor | None]:
        nonlocal in_pass, taken, first_rows
        xb, yb, rows = _unpack_batch(take(), taken, device)
        in_pass += 1
        taken += 1
        if rows > num_data:
            raise ValueError(
                f"batch {taken - 1} of x has {rows} rows, more than num_data={num_data}: "
                "num_data must be the size of the whole data set"
            )
        if taken == 1:
            first_rows = rows
        elif jit and rows != first_rows:
            raise ValueError(
                f"batch {taken - 1} of x has {rows} rows, the first had {first_rows}: a JIT ELBO "
                "compiles the shapes of its first call, so use batches of equal size "
                "(DataLoader(..., drop_last=True))"
            )
        model_scaler.scale = guide_scaler.scale = num_data / rows
        return xb, yb

    first = next_batch()
    # Create lazily initialised parameters on the first batch, which step 1 then uses too.
    svi.evaluate_loss(*first)
    pending: list[tuple[Tensor, Tensor | None]] = [first]

    def step_batch() -> tuple[Tensor, Tensor | None]:
        if pending:
            return pending.pop()  # its scale is still set
        return next_batch()

    return _run(svi, step_batch, num_steps, History(batch_size=first_rows), progress)


def _run(
    svi: SVI,
    next_batch: Callable[[], tuple[Tensor, Tensor | None]],
    num_steps: int,
    history: History,
    progress: bool,
) -> History:
    """The optimisation loop of :func:`fit`, after the parameters were created."""
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
