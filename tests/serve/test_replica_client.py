"""The Ray error mapping of ``serve/replica_client.py``, with Ray's real exception classes but no
cluster: the handle's generator is a FAKE for that one layer (the real handle is exercised by
``test_api``, ``test_limits`` and ``test_hardening`` on the session cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, RayTaskError
from ray.serve.exceptions import BackPressureError

from dfast_serve.wire import StreamingChunk, APIError
from dfast_serve.serve.replica_client import RayReplicaCall

CHUNK = StreamingChunk("In", 1, 1, 8, 0.1, 1.0, True, False, 1)


class Yielded:
    """In a script: an item the replica yields (an ``APIError`` it sends as a stream item, not a raise)."""

    def __init__(self, item: Any) -> None:
        self.item = item


class FakeGenerator:
    """What ``handle.options(stream=True).generate.remote(...)`` returns, playing a script: exceptions are
    raised (as Ray raises its own errors), ``Yielded`` items and chunks are returned."""

    def __init__(self, *items: Any) -> None:
        self.items = list(items)
        self.cancelled = 0

    async def __anext__(self) -> Any:
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, Yielded):
            return item.item
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled += 1
        raise BackPressureError(num_queued_requests=1, max_queued_requests=1)  # Ray may re-raise on cancel


def task_error() -> RayTaskError:
    return RayTaskError("generate", "Traceback ...", ValueError("bug"))


def first_error(*items: Any) -> tuple[APIError, FakeGenerator]:
    generator = FakeGenerator(*items)
    call = RayReplicaCall(generator, "tiny-mdlm", retry_after_s=3)
    with pytest.raises(APIError) as caught:
        asyncio.run(call.__anext__())
    return caught.value, generator


@pytest.mark.parametrize("exc,status,code,retry", [
    (BackPressureError(num_queued_requests=4, max_queued_requests=4), 503, "overloaded", 3),
    (task_error(), 500, "internal_error", None),
    (ActorDiedError(), 503, "replica_unavailable", 3),
    (ConnectionError("unreachable"), 503, "replica_unavailable", 3),
])
def test_ray_errors_before_the_first_chunk(exc, status, code, retry):
    err, generator = first_error(exc)
    assert (err.status, err.code, err.retry_after_s) == (status, code, retry)
    assert_no_exception_names(err)
    assert generator.cancelled == 1  # and a cancel that re-raises is swallowed


@pytest.mark.parametrize("exc", [task_error(), ActorDiedError(), ConnectionError("gone")])
def test_any_ray_error_after_the_first_chunk_is_replica_failed(exc):
    call = RayReplicaCall(FakeGenerator(CHUNK, exc), "tiny-mdlm", retry_after_s=3)

    async def drain() -> list[StreamingChunk]:
        return [chunk async for chunk in call]

    with pytest.raises(APIError) as caught:
        asyncio.run(drain())
    assert (caught.value.status, caught.value.code, caught.value.retry_after_s) == (503, "replica_failed", 3)
    assert_no_exception_names(caught.value)


def assert_no_exception_names(err: APIError) -> None:
    """Clients see what failed, never Ray's class names (``RayTaskError(ValueError)``)."""
    for name in ("Error", "Ray", "Exception", "Traceback"):
        assert name not in err.message, err.message


def test_a_replica_refusal_becomes_the_error_it_describes_and_chunks_pass_through():
    refusal = APIError(400, "prompt encodes to no tokens", param="prompt", code="invalid_value")
    err, _ = first_error(Yielded(refusal))
    assert err == APIError(400, "prompt encodes to no tokens", "invalid_request_error", "prompt", "invalid_value")

    async def drain() -> list[StreamingChunk]:
        return [chunk async for chunk in RayReplicaCall(FakeGenerator(CHUNK, CHUNK), "m", 1)]

    assert asyncio.run(drain()) == [CHUNK, CHUNK]
