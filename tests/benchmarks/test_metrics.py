"""metrics.py on a hand-timed run: every figure checked against arithmetic done by hand."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness.metrics import (
    ChunkEvent, RequestRecord, describe, e2e_latency, format_table, itls, nfe_to_first_token, percentile,
    run_duration, summarize, tokens_per_forward_pass, total_nfe, tpot, ttft,
)


def make_run() -> list[RequestRecord]:
    a = RequestRecord(  # role-only chunk first, then 3 text chunks, then an empty final chunk
        start=0.0,
        chunks=[ChunkEvent(0.25, "", None), ChunkEvent(0.5, "Hel", 1), ChunkEvent(0.75, "lo", 2),
                ChunkEvent(1.5, " world", 5), ChunkEvent(1.5, "", 5)],
        output_tokens=5, prompt_tokens=3, end=1.75,
    )
    b = RequestRecord(start=1.0, chunks=[ChunkEvent(1.125, "a", 1), ChunkEvent(1.625, "b", 3)],
                      output_tokens=1, prompt_tokens=2, end=2.0)
    failed = RequestRecord(start=0.5, error="HTTP 503: busy", end=0.5)
    no_usage = RequestRecord(start=2.0, chunks=[ChunkEvent(2.25, "x")], end=2.5)  # no usage, no NFE
    return [a, b, failed, no_usage]


def test_per_request_figures():
    a, b, failed, no_usage = make_run()
    assert ttft(a) == 0.5  # the role-only chunk at 0.25 does not count
    assert e2e_latency(a) == 1.75
    assert tpot(a) == (1.75 - 0.5) / 4 == 0.3125
    assert itls(a) == [0.25, 0.75]
    assert nfe_to_first_token(a) == 1 and total_nfe(a) == 5
    assert tokens_per_forward_pass(a) == 1.0 and tokens_per_forward_pass(b) == 1 / 3
    assert tokens_per_forward_pass(no_usage) is None and tokens_per_forward_pass(failed) is None
    assert ttft(b) == 0.125 and itls(b) == [0.5]
    assert tpot(b) is None  # one output token: undefined
    assert tpot(no_usage) is None and nfe_to_first_token(no_usage) is None and total_nfe(no_usage) is None
    assert ttft(failed) is None and itls(failed) == []
    assert a.text == "Hello world"


def test_e2e_falls_back_to_last_chunk_and_final_nfe_wins():
    r = RequestRecord(start=1.0, chunks=[ChunkEvent(1.5, "x", 2)], final_nfe=7)
    assert e2e_latency(r) == 0.5 and total_nfe(r) == 7
    assert e2e_latency(RequestRecord(start=0.0)) is None


def test_summary():
    records = make_run()
    assert run_duration(records) == 2.5
    s = summarize(records)
    assert (s["completed"], s["failed"], s["duration_s"]) == (3, 1, 2.5)
    assert (s["total_input_tokens"], s["total_output_tokens"]) == (5, 6)
    assert s["request_throughput"] == 3 / 2.5 and s["output_throughput"] == 6 / 2.5
    # TTFT over the 3 successful requests: 500, 125, 250 ms
    assert s["mean_ttft_ms"] == pytest.approx(875 / 3)
    assert s["median_ttft_ms"] == 250.0
    assert s["p90_ttft_ms"] == pytest.approx(450.0)
    assert s["p99_ttft_ms"] == pytest.approx(495.0)
    assert s["std_ttft_ms"] == pytest.approx(np.std([500, 125, 250]))
    assert (s["min_ttft_ms"], s["max_ttft_ms"]) == (125.0, 500.0)
    assert s["mean_tpot_ms"] == 312.5 and s["median_tpot_ms"] == 312.5
    assert sorted(s["per_request"]["itl_ms"][0] + s["per_request"]["itl_ms"][1]) == [250.0, 500.0, 750.0]
    assert s["median_itl_ms"] == 500.0 and s["mean_itl_ms"] == 500.0
    assert s["mean_e2el_ms"] == pytest.approx((1750 + 1000 + 500) / 3)
    assert s["mean_nfe_ttft"] == 1.0 and s["mean_nfe_total"] == 4.0 and s["max_nfe_total"] == 5.0
    assert s["mean_tpf"] == pytest.approx(2 / 3)
    per = s["per_request"]
    assert per["tpf"] == [1.0, 1 / 3, None, None]
    assert per["ttft_ms"] == [500.0, 125.0, None, 250.0]
    assert per["tpot_ms"] == [312.5, None, None, None]
    assert per["error"] == [None, None, "HTTP 503: busy", None]
    assert per["chunks"] == [3, 2, 0, 1]


def test_summary_with_explicit_duration_and_no_nfe():
    s = summarize([RequestRecord(start=0.0, chunks=[ChunkEvent(0.5, "x")], output_tokens=1, end=1.0)], duration_s=4.0)
    assert s["request_throughput"] == 0.25 and s["output_throughput"] == 0.25
    assert "mean_nfe_ttft" not in s  # no NFE reported: no NFE figures
    assert s["mean_tpot_ms"] is None and s["mean_itl_ms"] is None


def test_percentile_matches_numpy():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([7], 99) == 7
    rng = np.random.default_rng(0)
    values = rng.exponential(size=101).tolist()
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    with pytest.raises(ValueError):
        percentile([], 50)
    assert describe([])["mean"] is None


def test_table_layout():
    s = summarize(make_run())
    s["label"] = "unit"
    table = format_table(s)
    lines = table.splitlines()
    assert lines[0].strip("= ") == "Serving Benchmark Result" and set(lines[-1]) == {"="}
    assert all(len(line) == 50 for line in lines)
    assert any(line.startswith("Median TTFT (ms):") and line.endswith("250.00") for line in lines)
    assert any(line.startswith("Successful requests:") and line.endswith("3") for line in lines)
    assert "NFE to 1st token" in table and "floor" not in table
    assert format_table(summarize([RequestRecord(start=0.0, error="x", end=0.0)])).count("n/a") > 0


def test_summary_carries_vllm_bench_serve_field_names():
    s = summarize(make_run(), max_concurrency=4, request_rate=float("inf"))
    assert s["duration"] == 2.5 and s["total_token_throughput"] == (5 + 6) / 2.5
    assert s["ttfts"] == [0.5, 0.125, 0.0, 0.25]  # seconds, 0 for the failed one (as vLLM writes it)
    assert sorted(s["itls"][0] + s["itls"][1]) == [0.25, 0.5, 0.75] and s["itls"][2] == []
    assert len(s["latencies"]) == len(s["input_lens"]) == len(s["output_lens"]) == 4
    assert (s["max_concurrency"], s["request_rate"]) == (4, "inf")
    assert summarize(make_run(), request_rate=2.0)["request_rate"] == 2.0
    assert s["mean_ttft_ms"] == pytest.approx(875 / 3)  # our own keys unchanged
