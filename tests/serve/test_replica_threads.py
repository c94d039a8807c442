"""A replica's torch thread count comes from its config (no Ray: the undeployed replica class is built directly)."""

from __future__ import annotations

import torch

from dfast_serve.serve.replicas import ModelReplica

TINY = {"name": "tiny-mdlm", "engine": "diffusion", "source": "embedded", "device": "cpu"}


def test_torch_threads_sets_the_replicas_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        replica = ModelReplica.func_or_class(TINY, replica={"torch_threads": 2})
        assert torch.get_num_threads() == 2 and replica.stats()["torch_threads"] == 2
        torch.set_num_threads(2)
        assert ModelReplica.func_or_class(TINY, replica={}).stats()["torch_threads"] == 2  # unset: left as Ray set it
    finally:
        torch.set_num_threads(before)
