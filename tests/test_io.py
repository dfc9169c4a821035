"""Tests of :mod:`bayesdl.io`: round trips give identical predictions, bad files are refused
with a clear ValueError, pickled code is never run, and writes are atomic."""

from __future__ import annotations

import functools
import os
import pathlib
import pickle
import random

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from bayesdl.guides import MeanFieldNormal, low_rank
from bayesdl.inference import fit, predict
from bayesdl.inference.mcmc import MCMCResult
from bayesdl.io import atomic_write, load_posterior, save_posterior
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP
from bayesdl.priors import normal
from tests.common import assert_close


def build(seed=0, bayesian="all"):
    """The same architecture with a seed-dependent torch initialisation."""
    torch.manual_seed(seed)
    return BNN(
        MLP(2, 1, hidden=(5,), activation="tanh"),
        Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)),
        prior=normal(1.0),
        bayesian=bayesian,
    )


def data(n=30):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=gen)
    return x, torch.sin(x[:, 0]) - 0.5 * x[:, 1] + 0.1 * torch.randn(n, generator=gen)


def same_prediction(a, b):
    assert torch.equal(a.output, b.output)
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name])


def fake_mcmc(model, chains=2, draws=15):
    gen = torch.Generator().manual_seed(1)
    samples = {
        site: 0.5 * torch.randn(chains, draws, *prior.event_shape, generator=gen)
        for site, prior in model.priors().items()
    }
    samples["sigma"] = 0.1 + torch.rand(chains, draws, generator=gen)
    return MCMCResult(
        samples=samples,
        divergences=torch.rand(chains, draws, generator=gen) < 0.1,
        step_size=[0.05, 0.07],
        acceptance_rate=[0.85, 0.9],
        num_gradients=[1234, 1500],
        wall_time=2.5,
        kernel="nuts",
        settings={"num_samples": draws, "max_tree_depth": 7, "seed": 0},
    )


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["meanfield", "lowrank"])
@pytest.mark.parametrize("bayesian", ["all", "last"])
def test_guide_round_trip_gives_identical_predictions(tmp_path, kind, bayesian):
    x, y = data()
    model = build(0, bayesian)
    if kind == "meanfield":
        guide, loss = MeanFieldNormal(model), TraceMeanField_ELBO()
    else:
        guide, loss = low_rank(model, rank=2), Trace_ELBO()
    fit(model, guide, x, y, num_steps=30, lr=0.05, loss=loss, seed=0, progress=False)
    x_new = torch.linspace(-3, 3, 7).unsqueeze(-1).expand(7, 2).contiguous()
    before = predict(model, guide, x_new, num_samples=25, seed=3)
    path = save_posterior(
        tmp_path / "post.pt",
        model,
        guide,
        example_input=x,
        example_target=y,
        metadata={"method": kind, "steps": 30},
    )
    assert path == tmp_path / "post.pt"

    pyro.clear_param_store()
    fresh_model = build(1, bayesian)  # another initialisation: everything must come from the file
    fresh = MeanFieldNormal(fresh_model) if kind == "meanfield" else low_rank(fresh_model, rank=2)
    loaded = load_posterior(path, fresh_model, fresh)
    assert loaded is fresh
    after = predict(fresh_model, loaded, x_new, num_samples=25, seed=3)
    same_prediction(before, after)
    if bayesian == "last":  # point estimates travel in the model's state
        assert torch.equal(fresh_model.net[0].weight, model.net[0].weight)


def test_mcmc_result_round_trip(tmp_path):
    x, y = data()
    model = build(0)
    result = fake_mcmc(model)
    before = predict(model, result.flat(), x, num_samples=None)
    save_posterior(tmp_path / "mcmc.pt", model, result, example_input=x, example_target=y)
    fresh_model = build(1)
    loaded = load_posterior(tmp_path / "mcmc.pt", fresh_model)
    assert isinstance(loaded, MCMCResult)
    for site in result.samples:
        assert torch.equal(loaded.samples[site], result.samples[site])
    assert torch.equal(loaded.divergences, result.divergences)
    assert loaded.step_size == result.step_size
    assert loaded.acceptance_rate == result.acceptance_rate
    assert loaded.num_gradients == result.num_gradients
    assert loaded.wall_time == result.wall_time
    assert loaded.kernel == result.kernel
    assert loaded.settings == result.settings
    same_prediction(before, predict(fresh_model, loaded.flat(), x, num_samples=None))


def test_sample_dict_round_trip(tmp_path):
    x, y = data()
    model = build(0)
    samples = fake_mcmc(model).flat()
    before = predict(model, samples, x, num_samples=10)
    save_posterior(tmp_path / "s.pt", model, samples, example_input=x, example_target=y)
    loaded = load_posterior(tmp_path / "s.pt", build(1))
    assert set(loaded) == set(samples)
    same_prediction(before, predict(model, loaded, x, num_samples=10))


def test_file_permissions_follow_the_umask(tmp_path):
    x, y = data()
    model = build(0)
    path = save_posterior(
        tmp_path / "s.pt", model, fake_mcmc(model), example_input=x, example_target=y
    )
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# --- refusing bad files -----------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    x, y = data()
    model = build(0)
    path = save_posterior(
        tmp_path / "ok.pt", model, fake_mcmc(model), example_input=x, example_target=y
    )
    return path, model


def test_truncated_file_is_refused(saved, tmp_path):
    path, model = saved
    raw = path.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 10, 20):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="not a readable bayesdl posterior file"):
            load_posterior(bad, model)


def _random_bytes(seed: int, n: int = 4096) -> bytes:
    return random.Random(seed).randbytes(n)


def test_foreign_files_are_refused(tmp_path):
    model = build(0)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(_random_bytes(0))
    with pytest.raises(ValueError, match=r"noise\.pt"):
        load_posterior(noise, model)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="truncated or foreign"):
        load_posterior(empty, model)
    for i, obj in enumerate(({"weights": torch.zeros(3)}, [torch.zeros(2)], torch.ones(2))):
        other = tmp_path / f"other{i}.pt"
        torch.save(obj, other)
        with pytest.raises(ValueError, match="no 'bayesdl-posterior' marker"):
            load_posterior(other, model)
    with pytest.raises(FileNotFoundError):
        load_posterior(tmp_path / "missing.pt", model)


@pytest.mark.parametrize("content", ["text", "random2"])
def test_foreign_non_pickle_files_raise_value_error(tmp_path, content):
    path = tmp_path / "foreign.pt"
    if content == "text":
        path.write_text("hello world, this is not a posterior\n")
    else:
        path.write_bytes(_random_bytes(2))
    with pytest.raises(ValueError, match="foreign"):
        load_posterior(path, build(0))


def test_random_bytes_are_reported_as_foreign(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(_random_bytes(0))
    with pytest.raises(ValueError, match="truncated or foreign"):
        load_posterior(path, build(0))


def test_other_format_version_is_refused(saved, tmp_path):
    path, model = saved
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "v99.pt")
    with pytest.raises(ValueError, match="format version 99"):
        load_posterior(tmp_path / "v99.pt", model)


class _WritesMarker:
    """Unpickling this object calls ``Path.write_text(marker, ...)``: code in a pickle."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("payload_kind", ["custom_class", "partial_os_system"])
def test_pickled_code_is_refused_and_never_run(tmp_path, payload_kind):
    marker = tmp_path / "marker"
    if payload_kind == "custom_class":
        evil = _WritesMarker(marker)
    else:
        evil = functools.partial(os.system, f"touch {marker}")
    path = tmp_path / "evil.pt"
    torch.save({"format": "bayesdl-posterior", "version": 1, "kind": "samples", "x": evil}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        load_posterior(path, build(0))
    assert not marker.exists()
    # The file really does carry code: an unrestricted unpickler runs the custom class's
    # __reduce__ while loading, and hands back a live os.system call.
    payload = torch.load(path, weights_only=False)
    if payload_kind == "partial_os_system":
        assert not marker.exists()
        payload["x"]()
    assert marker.exists()


def test_mismatched_model_or_guide_is_refused(tmp_path):
    x, y = data()
    model = build(0)
    guide = MeanFieldNormal(model)
    fit(model, guide, x, y, num_steps=2, loss=TraceMeanField_ELBO(), progress=False)
    path = save_posterior(tmp_path / "g.pt", model, guide, example_input=x, example_target=y)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="pass a guide built like it"):
        load_posterior(path, build(1))
    torch.manual_seed(0)
    wider = BNN(MLP(2, 1, hidden=(6,)), Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)))
    with pytest.raises(ValueError, match="does not match the guide"):
        load_posterior(path, build(1), MeanFieldNormal(wider))
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="does not match the model"):
        load_posterior(path, wider, MeanFieldNormal(wider))


def test_save_rejects_unfitted_guide_and_bad_posterior(tmp_path):
    x, y = data()
    model = build(0)
    with pytest.raises(ValueError, match="fit it first"):
        save_posterior(
            tmp_path / "g.pt", model, MeanFieldNormal(model), example_input=x, example_target=y
        )
    with pytest.raises(TypeError, match="posterior"):
        save_posterior(tmp_path / "g.pt", model, [1, 2], example_input=x, example_target=y)
    assert list(tmp_path.iterdir()) == []


# --- atomic writes ----------------------------------------------------------------------------


def test_atomic_write_keeps_the_original_when_the_writer_fails(tmp_path):
    path = tmp_path / "file.pt"
    path.write_bytes(b"original contents")

    def failing(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"half a fi")
            handle.flush()
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"original contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.pt"]

    # The same through save_posterior: pickling the metadata fails midway through torch.save.
    x, y = data()
    model = build(0)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_posterior(
            path,
            model,
            fake_mcmc(model),
            example_input=x,
            example_target=y,
            metadata={"callback": lambda: None},
        )
    assert path.read_bytes() == b"original contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.pt"]


def test_atomic_write_replaces_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "file.bin"
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_bytes(b"one"))
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_bytes(b"two"))
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]
    x, y = data()
    model = build(0)
    out = tmp_path / "post.pt"
    save_posterior(out, model, fake_mcmc(model), example_input=x, example_target=y)
    first = load_posterior(out, model)
    save_posterior(out, model, fake_mcmc(model, draws=4), example_input=x, example_target=y)
    second = load_posterior(out, model)
    assert first.num_draws == 15 and second.num_draws == 4
    assert_close(second.samples["sigma"], fake_mcmc(model, draws=4).samples["sigma"])
