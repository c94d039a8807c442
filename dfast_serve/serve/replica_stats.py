"""What every model replica reports to the TTFT autoscaling policy (``serve/autoscaling.py``): the p90 of
its recent times to first chunk and its requests in flight. Shared by both replica kinds (``replicas.py``,
``vllm_replica.py``); nothing here imports torch, so the vLLM environment can load it."""

from __future__ import annotations

import time
from collections import deque

TTFT_WINDOW_S = 30.0  # recent TTFTs the autoscaler sees


class ReplicaLoad:
    """Requests in flight and recent TTFTs, counted by the replica's ``generate``."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests = 0
        self._recent_ttfts: deque[tuple[float, float]] = deque(maxlen=1024)

    def started(self) -> float:
        self.in_flight += 1
        self.requests += 1
        return time.monotonic()

    def first_chunk(self, started: float) -> None:
        now = time.monotonic()
        self._recent_ttfts.append((now, now - started))

    def ended(self) -> None:
        self.in_flight -= 1

    def ttft_p90_s(self) -> float:
        horizon = time.monotonic() - TTFT_WINDOW_S
        recent = sorted(t for at, t in self._recent_ttfts if at >= horizon)
        if not recent:
            return 0.0
        return recent[min(len(recent) - 1, int(0.9 * len(recent)))]

    def autoscaling_stats(self) -> dict[str, float]:
        return {"ttft_p90_s": self.ttft_p90_s(), "in_flight": float(self.in_flight)}
