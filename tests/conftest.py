"""Shared fixtures: every test starts from an empty param store, a fixed seed and validation on."""

from __future__ import annotations

import pyro
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    # Tests marked `cuda` (e.g. the "cuda" case of a device-parametrised test) skip cleanly
    # where torch sees no CUDA device, instead of failing at the first `.to("cuda")`.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The suite's models are tiny: handing their operations to a second OpenMP thread costs more
    # than it saves, and on a busy 2-core machine it slows fits by 5-15x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.enable_validation(False)
    pyro.clear_param_store()
