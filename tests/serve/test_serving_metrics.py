"""The ingress's request accounting (no Ray): every way a request can end leaves the gauges at zero
and is counted once."""

from __future__ import annotations

import pytest

from dfast_serve.wire import StreamingChunk
from dfast_serve.serve.metrics import ServingMetrics

MODEL = "tiny-mdlm"


def _chunk(total: int, nfe: int, finish: str | None = None, time_ms: float = 0.0) -> StreamingChunk:
    return StreamingChunk("x", 1, total, 64, 0.5, time_ms, False, finish is not None, nfe, finish, prompt_tokens=5)


def _value(metrics: ServingMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"model_name": MODEL, **labels}) or 0.0


def _gauges(metrics: ServingMetrics) -> tuple[float, float]:
    return _value(metrics, "dfast:num_requests_waiting"), _value(metrics, "dfast:num_requests_running")


def test_a_finished_request_is_timed_and_counted_once():
    metrics = ServingMetrics()
    request = metrics.request()
    request.routed(MODEL)
    assert _gauges(metrics) == (1, 0)
    request.chunk(_chunk(2, 1, time_ms=0.0))
    assert _gauges(metrics) == (0, 1)
    request.chunk(_chunk(8, 4, finish="length"))
    request.finish()
    request.abort()  # cleanup after a normal end changes nothing
    assert _gauges(metrics) == (0, 0)
    assert _value(metrics, "dfast:request_success_total", finished_reason="length") == 1
    assert _value(metrics, "dfast:request_success_total", finished_reason="abort") == 0
    assert _value(metrics, "dfast:time_to_first_token_seconds_count") == 1
    assert _value(metrics, "dfast:inter_token_latency_seconds_count") == 1
    assert _value(metrics, "dfast:generation_tokens_total") == 8
    assert _value(metrics, "dfast:prompt_tokens_total") == 5
    assert _value(metrics, "dfast:forward_passes_per_request_sum") == 4
    assert _value(metrics, "dfast:tokens_per_forward_pass_sum") == 2.0


def test_queue_time_is_time_to_first_chunk_minus_the_engines_own_time():
    metrics = ServingMetrics()
    request = metrics.request()
    request.arrived -= 10.0  # arrived 10 s ago; the engine spent 4 s of them on the first chunk
    request.routed(MODEL)
    request.chunk(_chunk(1, 1, time_ms=4000.0))
    queue = _value(metrics, "dfast:request_queue_time_seconds_sum")
    ttft = _value(metrics, "dfast:time_to_first_token_seconds_sum")
    assert 10.0 <= ttft < 11.0 and queue == pytest.approx(ttft - 4.0)


@pytest.mark.parametrize("ending", ["abort_waiting", "abort_running", "fail_waiting", "fail_running", "fail_unrouted"])
def test_every_other_ending_leaves_the_gauges_at_zero(ending):
    metrics = ServingMetrics()
    request = metrics.request()
    if ending != "fail_unrouted":
        request.routed(MODEL)
    if ending.endswith("running"):
        request.chunk(_chunk(3, 2))
    if ending.startswith("abort"):
        request.abort()
    else:
        request.fail("timeout")
    request.abort()
    request.fail("other")
    assert _gauges(metrics) == (0, 0)
    if ending.startswith("abort"):
        assert _value(metrics, "dfast:request_success_total", finished_reason="abort") == 1
    else:
        name = "" if ending == "fail_unrouted" else MODEL
        assert metrics.registry.get_sample_value("dfast:request_errors_total",
                                                 {"model_name": name, "code": "timeout"}) == 1
    assert _value(metrics, "dfast:generation_tokens_total") == (3 if ending.endswith("running") else 0)
    assert _value(metrics, "dfast:e2e_request_latency_seconds_count") == 0
