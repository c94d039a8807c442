"""The harness client and the load driver (benchmarks.serving.load) against an in-memory OpenAI server (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json

import httpx

from benchmarks.harness.client import BenchConfig, request_body, run_benchmark
from benchmarks.serving.load import parse_args


def fake_server(seen: list[dict]) -> httpx.MockTransport:
    """Streams 3 text chunks with dfast NFE, a usage chunk and [DONE]; 503 for model "busy"."""

    async def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if body["model"] == "busy":
            return httpx.Response(503, json={"error": {"message": "queue full", "type": "overloaded"}})
        if not body["stream"]:
            return httpx.Response(200, json={"choices": [{"index": 0, "text": "abc", "finish_reason": "length"}],
                                             "usage": {"prompt_tokens": 2, "completion_tokens": 3}, "dfast": {"nfe": 5}})

        async def events():
            for i, text in enumerate("abc"):
                await asyncio.sleep(0.001)
                chunk = {"choices": [{"index": 0, "text": text, "finish_reason": None}], "dfast": {"nfe": i + 1}}
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            yield b'data: {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}\n\ndata: [DONE]\n\n'

        return httpx.Response(200, content=events(), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handle)


def test_request_body():
    config = BenchConfig(model="m", max_tokens=8, temperature=0.0, extra_body={"dfast": {"ultra_fast": False}})
    body = request_body(config, "hi")
    assert body == {"model": "m", "max_tokens": 8, "stream": True, "prompt": "hi", "temperature": 0.0,
                    "stream_options": {"include_usage": True}, "dfast": {"ultra_fast": False}}
    chat = request_body(BenchConfig(model="m", endpoint="/v1/chat/completions", stream=False), "hi")
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and "stream_options" not in chat


def test_run_benchmark_streaming():
    seen: list[dict] = []
    config = BenchConfig(model="m", num_prompts=5, max_tokens=3, concurrency=2, warmup=1, label="mock")
    summary = asyncio.run(run_benchmark(config, transport=fake_server(seen)))
    assert len(seen) == 6  # warm-up + 5
    assert summary["completed"] == 5 and summary["failed"] == 0
    assert summary["total_output_tokens"] == 15 and summary["total_input_tokens"] == 10
    assert summary["generated_texts"] == ["abc"] * 5
    assert summary["mean_nfe_ttft"] == 1.0 and summary["mean_nfe_total"] == 3.0
    assert summary["per_request"]["chunks"] == [3] * 5
    assert 0 < summary["median_ttft_ms"] <= summary["median_e2el_ms"]
    assert summary["label"] == "mock" and summary["kind"] == "serving" and summary["config"]["concurrency"] == 2
    json.dumps(summary)  # JSON-able


def test_run_benchmark_poisson_nonstream_and_errors():
    summary = asyncio.run(run_benchmark(BenchConfig(model="m", num_prompts=3, request_rate=1000.0, stream=False,
                                                    warmup=0), transport=fake_server([])))
    assert summary["completed"] == 3 and summary["per_request"]["ttft_ms"] == summary["per_request"]["e2el_ms"]
    failed = asyncio.run(run_benchmark(BenchConfig(model="busy", num_prompts=2, warmup=0), transport=fake_server([])))
    assert failed["completed"] == 0 and failed["failed"] == 2
    assert failed["per_request"]["error"] == ["HTTP 503: queue full"] * 2


def test_cli_arguments():
    config, save = parse_args(["--model", "tiny-mdlm", "--endpoint", "/v1/chat/completions", "--request-rate", "inf",
                               "--no-stream", "--extra-body", '{"dfast": {"steps": 4}}', "--save-result", "x.json"])
    assert config.chat and not config.stream and config.request_rate == float("inf")
    assert config.extra_body == {"dfast": {"steps": 4}} and save == "x.json"
