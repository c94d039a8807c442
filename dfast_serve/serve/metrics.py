"""Prometheus metrics of the ingress, named after vLLM's (``vllm:`` becomes ``dfast:``).

Every request passes through the ingress, so the ingress records them; the serving logic
(``api/serving.py``) reports through ``RequestMetrics``. Each family is recorded twice
(``cluster_metrics.py``): in the ingress replica's own registry, served at ``GET /metrics`` (with
``router.num_replicas > 1`` a scrape through the proxy reaches one replica and shows only what that
one relayed), and through Ray's metrics API as ``ray_dfast_*``, exported by every node's metrics
agent: scraping all nodes sees every ingress replica. Times are measured at the ingress with a
monotonic clock, from the moment the request arrived (before its body was read):

* time to first token: until the first chunk (the first committed tokens) comes back from the
  model replica;
* queue time: that same interval minus the replica engine's own time to that chunk (the
  chunk's ``time_ms``), i.e. the time spent before the engine started working on the request:
  waiting for a replica slot, handle routing and transport, tokenization, waiting for the
  engine thread;
* inter-token latency: between consecutive chunks (a diffusion chunk may carry several tokens);
* end-to-end latency: until the last chunk.

Running requests have received their first chunk; waiting ones have been routed to a model but
have not. Request-level histograms (end-to-end, forward passes, tokens per pass) are observed
for requests that finish (``stop`` / ``length``); token counters count every token that came
back, including those of aborted requests.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dfast_serve.serve.cluster_metrics import counter, gauge, histogram

if TYPE_CHECKING:
    from dfast_serve.wire import StreamingChunk

# vLLM's buckets, with finer ones at the low end: CPU-sized models answer in milliseconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
PASSES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TOKENS_PER_PASS_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0)

MODEL = ("model_name",)


class ServingMetrics:
    """The metric families; one instance per ingress replica: its own registry (``/metrics``) and Ray
    metrics (complete across ingress replicas, see cluster_metrics.py)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = histogram("time_to_first_token_seconds", "Time from arrival to the first chunk of tokens.",
                              MODEL, TTFT_BUCKETS, r)
        self.itl = histogram("inter_token_latency_seconds", "Time between consecutive chunks of a request.",
                             MODEL, ITL_BUCKETS, r)
        self.e2e = histogram("e2e_request_latency_seconds", "Time from arrival to the last chunk.",
                             MODEL, E2E_BUCKETS, r)
        self.queue = histogram("request_queue_time_seconds",
                               "Time from arrival until the engine started the request.", MODEL,
                               TTFT_BUCKETS, r)
        self.success = counter("request_success", "Requests that ended: stop, length, or abort (client left).",
                               MODEL + ("finished_reason",), r)
        self.errors = counter("request_errors", "Requests that ended with an error, by error code "
                              "(model_name is empty when the request never reached a model).",
                              MODEL + ("code",), r)
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of requests that produced output.",
                                     MODEL, r)
        self.generation_tokens = counter("generation_tokens", "Generated tokens.", MODEL, r)
        self.forward_passes = histogram("forward_passes_per_request", "Model forward passes per request.",
                                        MODEL, PASSES_BUCKETS, r)
        self.tokens_per_pass = histogram("tokens_per_forward_pass",
                                         "Generated tokens per forward pass, per request.", MODEL,
                                         TOKENS_PER_PASS_BUCKETS, r)
        self.running = gauge("num_requests_running", "Requests streaming from a replica.", MODEL, r)
        self.waiting = gauge("num_requests_waiting", "Requests routed to a model, before their first chunk.",
                             MODEL, r)
        # 1 per live ingress replica: `sum` counts the ingress replicas whose metrics reach the scraper.
        self.up = gauge("router_up", "1 while this ingress replica is serving and reporting metrics.", (), r)
        self.up.labels().inc()

    def request(self) -> "RequestMetrics":
        return RequestMetrics(self)

    def exposition(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """One request's path through the ingress: routed → first chunk → chunks → exactly one end.

    Every method is safe to call in any state; only the first end (``finish``, ``abort``,
    ``fail``) counts, so cleanup code can call ``abort`` unconditionally.
    """

    def __init__(self, metrics: ServingMetrics) -> None:
        self._m = metrics
        self.arrived = time.monotonic()
        self.model = ""
        self._state = "new"  # new → waiting → running → ended
        self._last_at = 0.0
        self._last: StreamingChunk | None = None

    def routed(self, model: str) -> None:
        if self._state != "new":
            return
        self.model, self._state = model, "waiting"
        self._m.waiting.labels(model).inc()

    def chunk(self, chunk: StreamingChunk) -> None:
        now = time.monotonic()
        if self._state == "waiting":
            self._m.waiting.labels(self.model).dec()
            self._m.running.labels(self.model).inc()
            self._state = "running"
            ttft = now - self.arrived
            self._m.ttft.labels(self.model).observe(ttft)
            self._m.queue.labels(self.model).observe(max(0.0, ttft - chunk.time_ms / 1000.0))
        elif self._state == "running":
            self._m.itl.labels(self.model).observe(now - self._last_at)
        else:
            return
        self._last_at, self._last = now, chunk

    def finish(self) -> None:
        """The replica's stream ended normally."""
        last = self._last
        if not self._end() or last is None:
            return
        model = self.model
        self._m.success.labels(model, last.finish_reason or "stop").inc()
        self._m.e2e.labels(model).observe(self._last_at - self.arrived)
        self._m.forward_passes.labels(model).observe(last.nfe)
        if last.nfe:
            self._m.tokens_per_pass.labels(model).observe(last.total_tokens / last.nfe)

    def abort(self) -> None:
        """The client went away (or cleanup ran after another end, then this does nothing)."""
        if self._end():
            self._m.success.labels(self.model, "abort").inc()

    def fail(self, code: str | None) -> None:
        if self._end():
            self._m.errors.labels(self.model, code or "error").inc()

    def _end(self) -> bool:
        """Leave the gauges and count tokens; False when the request had already ended."""
        if self._state == "ended":
            return False
        if self._state == "waiting":
            self._m.waiting.labels(self.model).dec()
        elif self._state == "running":
            self._m.running.labels(self.model).dec()
        self._state = "ended"
        if self._last is not None:
            self._m.prompt_tokens.labels(self.model).inc(self._last.prompt_tokens)
            self._m.generation_tokens.labels(self.model).inc(self._last.total_tokens)
        return True
