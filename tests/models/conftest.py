"""Native LLaDA / Dream adapters on the tiny golden checkpoints, loaded once per session."""

from __future__ import annotations

import pytest

from dfast_serve.models.native import load_native_diffusion
from tests import torch_threads
from tests.models.checkpoints import make_checkpoint


@pytest.fixture(scope="session")
def native(tmp_path_factory):
    """family -> DiffusionLM loaded through the native loader from a full checkpoint directory."""
    root = tmp_path_factory.mktemp("native")
    return {family: load_native_diffusion(str(make_checkpoint(family, root / family)), family, f"tiny-{family}")
            for family in ("llada", "dream")}


@pytest.fixture(scope="session")
def one_layer(tmp_path_factory):
    """The same checkpoints cut to their first layer: keys/values depend on token and position alone."""
    root = tmp_path_factory.mktemp("one-layer")
    return {family: load_native_diffusion(str(make_checkpoint(family, root / family, num_layers=1)), family,
                                          f"tiny-{family}-1layer")
            for family in ("llada", "dream")}


one_thread = pytest.fixture(autouse=True)(torch_threads.one_torch_thread)  # tiny checkpoints: far faster on one
