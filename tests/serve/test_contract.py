"""The records that cross the DeploymentHandle (no Ray)."""

from __future__ import annotations

import pickle

import pytest

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine.types import SamplingParams
from dfast_serve.serve.contract import ReplicaChunk, ReplicaError, ReplicaRequest


def test_a_chunk_is_a_delta_without_the_running_text():
    assert "full_text" not in ReplicaChunk.__dataclass_fields__
    chunk = ReplicaChunk(" was", 1, 4, 8, 0.5, 3.0, False, False, 3, prompt_tokens=5, draft=" God")
    assert pickle.loads(pickle.dumps(chunk)) == chunk


def test_records_survive_pickling_as_they_cross_processes():
    request = ReplicaRequest("cmpl-1", SamplingParams(max_tokens=8, stop=["\n"]), messages=[{"role": "user",
                             "content": "Hi"}], diffusion=DiffusionOptions(block_length=16), arrived=1.5)
    assert pickle.loads(pickle.dumps(request)) == request
    error = ReplicaError(400, "too long", param="max_tokens", code="context_length_exceeded")
    assert pickle.loads(pickle.dumps(error)).to_api_error().body()["error"]["param"] == "max_tokens"


def test_a_request_has_exactly_one_of_prompt_or_messages():
    with pytest.raises(ValueError, match="exactly one"):
        ReplicaRequest("r", SamplingParams())
    with pytest.raises(ValueError, match="exactly one"):
        ReplicaRequest("r", SamplingParams(), prompt="a", messages=[{"role": "user", "content": "b"}])
