"""The metrics hooks the serving logic calls for each request, and a no-op pair for in-process use.

``serve/metrics.py`` implements them over Ray's metrics API; benchmarks and tests that drive
``OpenAIServing`` without a cluster use ``NullMetrics``.
"""

from __future__ import annotations

import time
from typing import Protocol

from dfast_serve.wire import StreamingChunk


class RequestTracker(Protocol):
    """Metrics hooks for one request; only the first end (finish, abort, fail) counts."""

    arrived: float  # time.monotonic() at arrival

    def routed(self, model: str) -> None: ...
    def chunk(self, chunk: StreamingChunk) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...
    def fail(self, code: str | None) -> None: ...


class Metrics(Protocol):
    def request(self) -> RequestTracker: ...


class NullTracker:
    """A request's hooks that record nothing."""

    def __init__(self) -> None:
        self.arrived = time.monotonic()

    def routed(self, model: str) -> None: ...
    def chunk(self, chunk: StreamingChunk) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...
    def fail(self, code: str | None) -> None: ...


class NullMetrics:
    """``Metrics`` that record nothing (in-process benchmarks and tests)."""

    def request(self) -> NullTracker:
        return NullTracker()
