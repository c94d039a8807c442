"""The records that cross the DeploymentHandle, and the one error record (no Ray)."""

from __future__ import annotations

import pickle

import pytest

from dfast_serve.wire import APIError, DiffusionOptions, ReplicaRequest, SamplingParams, StreamingChunk


def test_a_chunk_is_a_delta_without_the_running_text():
    assert "full_text" not in StreamingChunk.__dataclass_fields__
    chunk = StreamingChunk(" was", 1, 4, 8, 0.5, 3.0, False, False, 3, prompt_tokens=5, draft=" God")
    assert pickle.loads(pickle.dumps(chunk)) == chunk


def test_records_survive_pickling_as_they_cross_processes():
    request = ReplicaRequest("cmpl-1", SamplingParams(max_tokens=8, stop=["\n"]), messages=[{"role": "user",
                             "content": "Hi"}], diffusion=DiffusionOptions(block_length=16), arrived=1.5)
    assert pickle.loads(pickle.dumps(request)) == request
    error = APIError(503, "busy", "server_overloaded", param=None, code="overloaded", retry_after_s=2)
    copy = pickle.loads(pickle.dumps(error))
    assert copy == error and copy.headers() == {"Retry-After": "2"} and copy.body()["error"]["code"] == "overloaded"


def test_a_request_has_exactly_one_of_prompt_or_messages():
    with pytest.raises(ValueError, match="exactly one"):
        ReplicaRequest("r", SamplingParams())
    with pytest.raises(ValueError, match="exactly one"):
        ReplicaRequest("r", SamplingParams(), prompt="a", messages=[{"role": "user", "content": "b"}])


def test_an_error_prints_its_message_alone():
    """What a log line or a re-raised exception shows: the client's message, not the dataclass repr."""
    assert str(APIError(400, "prompt encodes to no tokens", param="prompt")) == "prompt encodes to no tokens"
