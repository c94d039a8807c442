"""What the serving logic needs from a model's replicas, and a generation in flight.

``ReplicaClient`` is the interface ``OpenAIServing`` is given per model (Ray's in production,
``serve/replica_client.py``; a fake in the Ray-free tests). ``ReplicaStream`` is a generation whose
first chunk is in hand: it relays the rest within the request's deadline and cancels the replica's
work however the relay ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Protocol

from dfast_serve.api.errors import internal_error
from dfast_serve.api.tracking import RequestTracker
from dfast_serve.wire import APIError, ReplicaRequest, StreamingChunk

logger = logging.getLogger(__name__)


class ReplicaCall(Protocol):
    """One generation on a replica: ``StreamingChunk`` deltas, then ``StopAsyncIteration``.

    Every failure (a refusal, overload, a dead replica) is raised as an ``APIError``.
    """

    def __aiter__(self) -> "ReplicaCall": ...

    async def __anext__(self) -> StreamingChunk: ...

    def cancel(self) -> None:
        """Stop the generation; safe to call at any time, any number of times."""


class ReplicaClient(Protocol):
    """The replicas of one served model."""

    def generate(self, request: ReplicaRequest) -> ReplicaCall: ...

    async def check_ready(self, timeout_s: float) -> str:
        """"ok", or why no replica can take a request now."""

    async def model_card(self, timeout_s: float) -> dict[str, Any]:
        """``root`` (where the weights and tokenizer came from) and ``max_model_len``, from a replica."""

    async def tokenize(self, prompt: str | None, messages: list[dict[str, str]] | None, add_special_tokens: bool,
                       add_generation_prompt: bool, timeout_s: float) -> list[int]: ...

    async def detokenize(self, tokens: list[int], timeout_s: float) -> tuple[str, list[str]]:
        """The text of ``tokens``, and each token's own string."""


class ReplicaStream:
    """A generation whose first chunk is in hand, bounded by the request deadline.

    Iterating (once) yields the chunks and turns a failure or the deadline into an ``APIError``; however
    it ends (done, failed, timed out, or abandoned by a client that left), ``close`` cancels the
    replica's generation, which then leaves the batch before its next forward pass.
    """

    def __init__(self, first: StreamingChunk, call: ReplicaCall, tracker: RequestTracker, timeout_s: float) -> None:
        self.first = first
        self.call = call
        self.tracker = tracker
        self.timeout_s = timeout_s
        self.deadline = tracker.arrived + timeout_s

    async def __aiter__(self) -> AsyncIterator[StreamingChunk]:
        try:
            yield self.first
            while True:
                try:
                    chunk = await asyncio.wait_for(self.call.__anext__(), max(self.deadline - time.monotonic(), 0.0))
                except StopAsyncIteration:
                    self.tracker.finish()
                    return
                except asyncio.TimeoutError:
                    raise self._failed(timeout_error(self.timeout_s)) from None
                except APIError as err:
                    raise self._failed(err) from None
                except Exception:  # noqa: BLE001 - a bug on the call path: logged, the client gets an error event
                    logger.exception("relaying a generation failed")
                    raise self._failed(internal_error()) from None
                self.tracker.chunk(chunk)
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        """Stop the replica (a no-op after a normal end); a request nothing else ended was aborted."""
        self.call.cancel()
        self.tracker.abort()

    def _failed(self, err: APIError) -> APIError:
        self.tracker.fail(err.code)
        return err


def timeout_error(limit_s: float) -> APIError:
    return APIError(504, f"Generation exceeded the request timeout of {limit_s:g} s", "timeout_error", None,
                    "timeout")
