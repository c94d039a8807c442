"""Native LLaDA / Dream adapters on the tiny golden checkpoints, loaded once per session."""

from __future__ import annotations

import pytest

from dfast_serve.models.native import load_native_diffusion
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


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny checkpoints are far faster on one thread than on two a loaded machine shares."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
