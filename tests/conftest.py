"""Shared fixtures: the embedded models load once per test session."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_mdlm():
    from dfast_serve.models.embedded import load_tiny_mdlm

    return load_tiny_mdlm()


@pytest.fixture(scope="session")
def smollm2():
    from dfast_serve.models.embedded import load_smollm2

    return load_smollm2()
