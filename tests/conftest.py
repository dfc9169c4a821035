"""Shared fixtures: every test starts from an empty param store, a fixed seed and validation on."""

from __future__ import annotations

import pyro
import pytest


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.enable_validation(False)
    pyro.clear_param_store()
