"""The records that cross the DeploymentHandle (no Ray)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine.types import SamplingParams
from dfast_serve.serve.contract import ReplicaChunk, ReplicaError, ReplicaRequest


def test_a_chunk_is_a_delta_built_without_reading_the_engines_running_text():
    engine_chunk = SimpleNamespace(new_text=" was", new_tokens=1, total_tokens=4, target_tokens=8, progress=0.5,
                                   time_ms=3.0, is_first=False, is_final=False, nfe=3, finish_reason=None,
                                   prompt_tokens=5)  # no full_text attribute at all
    chunk = ReplicaChunk.from_engine(engine_chunk)
    assert (chunk.new_text, chunk.total_tokens, chunk.nfe, chunk.prompt_tokens) == (" was", 4, 3, 5)
    assert "full_text" not in ReplicaChunk.__dataclass_fields__


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
