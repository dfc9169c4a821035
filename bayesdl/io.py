"""Saving and loading fitted posteriors: atomic writes, safe reads.

A file holds tensors and plain containers only, written with :func:`torch.save` to a temporary
file in the target folder and renamed into place, so a crash never leaves a half-written file.
Reading uses ``torch.load(..., weights_only=True)``: a file carrying pickled code is refused, and
a truncated or foreign file raises a ValueError that says so.

What is saved: the model's ``state_dict`` (point-estimate parameters and buffers), and either the
guide's parameters (as stored, unconstrained, in Pyro's param store) or the MCMC draws with their
chain structure and statistics. Code is never saved: to load, build the same model (and guide)
and pass them in.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer.autoguide import AutoGuide
from torch import Tensor, nn

from bayesdl.inference.mcmc import MCMCResult

__all__ = [
    "atomic_write",
    "load_posterior",
    "posterior_payload",
    "save_inference_data",
    "save_posterior",
]

_FORMAT = "bayesdl-posterior"
_VERSION = 1


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The rename is atomic on POSIX file systems: readers see the old file or the complete new
    one, never a partial write; on failure the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _guide_parameter_names(guide: nn.Module) -> list[str]:
    """Names of the guide's parameters in Pyro's param store."""
    own = {id(p) for p in guide.parameters()}
    store = pyro.get_param_store()
    names = [name for name, p in store.named_parameters() if id(p) in own]
    if not names:  # PyroModule guides keep parameters in the store under their own names
        prefix = getattr(guide, "_pyro_name", type(guide).__name__)
        names = [name for name, _ in store.named_parameters() if name.startswith(prefix + ".")]
    return names


def posterior_payload(
    model: nn.Module,
    posterior: AutoGuide | nn.Module | MCMCResult | dict[str, Tensor],
    *,
    example_input: Tensor,
    example_target: Tensor | None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The plain dict of tensors that :func:`save_posterior` writes (and Lightning checkpoints
    of :class:`~bayesdl.inference.lightning.SVIModule` carry under ``"bayesdl"``)."""
    payload: dict[str, Any] = {
        "format": _FORMAT,
        "version": _VERSION,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "example_input": example_input[:1].detach().cpu(),
        "example_target": None if example_target is None else example_target[:1].detach().cpu(),
        "metadata": dict(metadata or {}),
    }
    if isinstance(posterior, MCMCResult):
        payload["kind"] = "mcmc"
        payload["samples"] = {k: v.detach().cpu() for k, v in posterior.samples.items()}
        payload["mcmc"] = {
            "divergences": posterior.divergences.cpu(),
            "step_size": list(posterior.step_size),
            "acceptance_rate": list(posterior.acceptance_rate),
            "num_gradients": list(posterior.num_gradients),
            "wall_time": posterior.wall_time,
            "kernel": posterior.kernel,
            "settings": dict(posterior.settings),
            "num_steps": posterior.num_steps.cpu(),
        }
    elif isinstance(posterior, dict):
        payload["kind"] = "samples"
        payload["samples"] = {k: v.detach().cpu() for k, v in posterior.items()}
    elif isinstance(posterior, nn.Module):
        store = pyro.get_param_store()
        names = _guide_parameter_names(posterior)
        if not names:
            raise ValueError("the guide has no parameters in the param store: fit it first")
        params = dict(store.named_parameters())
        payload["kind"] = "guide"
        payload["guide_class"] = type(posterior).__name__
        payload["guide_params"] = {n: params[n].detach().cpu() for n in names}
    else:
        raise TypeError(
            "posterior must be a guide (nn.Module), an MCMCResult or a dict of samples, got "
            f"{type(posterior).__name__}"
        )
    return payload


def save_posterior(
    path: str | os.PathLike[str],
    model: nn.Module,
    posterior: AutoGuide | nn.Module | MCMCResult | dict[str, Tensor],
    *,
    example_input: Tensor,
    example_target: Tensor | None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save a fitted posterior of ``model`` to ``path`` atomically.

    Arguments:
        path: Target file (conventionally ``*.pt``).
        model: The fitted model (its ``state_dict`` is saved).
        posterior: A fitted guide, an :class:`~bayesdl.inference.mcmc.MCMCResult` or a dict of
            samples.
        example_input: Training inputs (the first row is kept) to rebuild a guide on load.
        example_target: The matching training targets (the first entry is kept): the guide must
            be rebuilt with an *observed* ``y``, or it would treat ``obs`` as latent. ``None``
            for models of ``x`` alone.
        metadata: Extra plain values (str, numbers, lists, dicts) to keep alongside.

    Returns:
        The path written.
    """
    payload = posterior_payload(
        model,
        posterior,
        example_input=example_input,
        example_target=example_target,
        metadata=metadata,
    )
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no posterior file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only=True names the global it refused; anything else is not a pickle of ours.
        if "Unsupported global" in str(err) or "GLOBAL" in str(err):
            raise ValueError(
                f"refusing to load {path}: it holds objects other than tensors and plain "
                f"containers (weights_only=True rejected it: {err})"
            ) from err
        raise ValueError(
            f"{path} is not a readable bayesdl posterior file (truncated or foreign): {err}"
        ) from err
    except Exception as err:  # the legacy reader fails on foreign bytes in many ways
        raise ValueError(
            f"{path} is not a readable bayesdl posterior file (truncated or foreign): {err}"
        ) from err
    if isinstance(payload, dict) and isinstance(payload.get("bayesdl"), dict):
        payload = payload["bayesdl"]  # a Lightning checkpoint of an SVIModule
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a bayesdl posterior file (no '{_FORMAT}' marker)")
    if payload.get("version") != _VERSION:
        raise ValueError(
            f"{path} has format version {payload.get('version')}; this bayesdl reads {_VERSION}"
        )
    return payload


def load_posterior(
    path: str | os.PathLike[str],
    model: nn.Module,
    guide: nn.Module | None = None,
) -> nn.Module | MCMCResult | dict[str, Tensor]:
    """Load a posterior saved by :func:`save_posterior` into freshly built objects.

    Also reads the ``.ckpt`` checkpoints that Lightning writes while training an
    :class:`~bayesdl.inference.lightning.SVIModule` (they carry the same payload).

    Arguments:
        path: The file.
        model: A model built like the saved one; its state is overwritten.
        guide: For a saved guide, a guide built like the saved one (not yet fitted); its
            parameters are created and overwritten in Pyro's param store.

    Returns:
        The guide, the :class:`~bayesdl.inference.mcmc.MCMCResult`, or the dict of samples.

    Raises:
        ValueError: The file is truncated, foreign, from another format version, carries code,
            or does not match the model or guide.
    """
    path = Path(path)
    payload = _read(path)
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as err:
        raise ValueError(f"{path} does not match the model: {err}") from err
    kind = payload.get("kind")
    if kind == "mcmc":
        stats = payload["mcmc"]
        return MCMCResult(
            samples=payload["samples"],
            divergences=stats["divergences"],
            step_size=stats["step_size"],
            acceptance_rate=stats["acceptance_rate"],
            num_gradients=stats["num_gradients"],
            wall_time=stats["wall_time"],
            kernel=stats["kernel"],
            settings=stats["settings"],
            num_steps=stats.get("num_steps", torch.zeros(0, dtype=torch.long)),
        )
    if kind == "samples":
        return payload["samples"]
    if kind != "guide":
        raise ValueError(f"{path} holds an unknown posterior kind {kind!r}")
    if guide is None:
        raise ValueError(
            f"{path} holds a fitted {payload['guide_class']}: pass a guide built like it"
        )
    # Running the guide once creates its parameters (AutoGuide prototype) in the store.
    reference = next(iter(model.parameters()), None)
    example, target = payload["example_input"], payload["example_target"]
    if reference is not None:
        example = example.to(reference.device)
        target = None if target is None else target.to(reference.device)
    with torch.no_grad(), pyro.poutine.block():
        guide(example, target)
    params = dict(pyro.get_param_store().named_parameters())
    saved: dict[str, Tensor] = payload["guide_params"]
    missing = sorted(set(saved) - set(params))
    if missing:
        raise ValueError(f"{path} does not match the guide: parameters {missing} are not in it")
    with torch.no_grad():
        for name, value in saved.items():
            if params[name].shape != value.shape:
                raise ValueError(
                    f"{path} does not match the guide: {name} has shape {tuple(value.shape)} in "
                    f"the file and {tuple(params[name].shape)} in the guide"
                )
            params[name].copy_(value.to(params[name].device))
    return guide


def save_inference_data(path: str | os.PathLike[str], idata: Any) -> Path:
    """Write ArviZ InferenceData to netCDF atomically."""
    return atomic_write(path, lambda tmp: idata.to_netcdf(tmp))
