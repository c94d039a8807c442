"""The HTTP client of every served benchmark: one OpenAI request timed as ``vllm bench serve`` does,
and a run of them at a fixed concurrency or Poisson arrival rate (``run_benchmark``).

Streaming requests ask for ``stream_options.include_usage``; what comes back is folded into a
``RequestRecord`` (``harness/sse.py``) and summarised by ``harness/metrics.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from benchmarks.harness.metrics import RequestRecord, summarize
from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import stamp
from benchmarks.harness.sse import SSEDecoder, apply_event, parse_payload, record_from_response

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


@dataclass
class BenchConfig:
    """One benchmark run. Neither ``concurrency`` nor ``request_rate`` set means concurrency 1."""

    model: str
    base_url: str = "http://127.0.0.1:8000"
    endpoint: str = "/v1/completions"
    num_prompts: int = 10
    max_tokens: int = 64
    concurrency: int | None = None
    request_rate: float | None = None  # requests/s, Poisson arrivals; inf = all at once
    seed: int = 0
    stream: bool = True
    temperature: float | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    prompts_file: str | None = None
    warmup: int = 1
    timeout_s: float = 300.0
    api_key: str | None = None
    label: str | None = None
    stream_usage: bool = True  # ask for the usage chunk (stream_options); False for servers that reject the field

    @property
    def chat(self) -> bool:
        return self.endpoint.rstrip("/").endswith("chat/completions")


def request_body(config: BenchConfig, prompt: str) -> dict[str, Any]:
    """The OpenAI request body for one prompt; ``extra_body`` keys override top-level fields."""
    body: dict[str, Any] = {"model": config.model, "max_tokens": config.max_tokens, "stream": config.stream}
    if config.chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if config.stream and config.stream_usage:
        body["stream_options"] = {"include_usage": True}
    if config.temperature is not None:
        body["temperature"] = config.temperature
    body.update(config.extra_body)
    return body


def _http_error(status: int, raw: bytes) -> str:
    try:
        err = json.loads(raw)["error"]
        return f"HTTP {status}: {err.get('message', err) if isinstance(err, dict) else err}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {raw[:200].decode('utf-8', 'replace')}"


async def send_request(client: httpx.AsyncClient, config: BenchConfig, prompt: str) -> RequestRecord:
    """Send one request and time what comes back; failures end up in ``record.error``."""
    url = config.base_url.rstrip("/") + config.endpoint
    body = request_body(config, prompt)
    record = RequestRecord(start=time.perf_counter())
    try:
        if not config.stream:
            response = await client.post(url, json=body)
            now = time.perf_counter()
            if response.status_code != 200:
                record.error, record.end = _http_error(response.status_code, response.content), now
            else:
                record_from_response(record, response.json(), now)
            return record
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                record.error = _http_error(response.status_code, await response.aread())
                record.end = time.perf_counter()
                return record
            decoder = SSEDecoder()
            async for raw in response.aiter_bytes():
                now = time.perf_counter()
                for payload in decoder.feed(raw):
                    apply_event(record, parse_payload(payload), now)
            for payload in decoder.close():
                apply_event(record, parse_payload(payload), time.perf_counter())
        if record.end is None:
            record.end = time.perf_counter()
            record.error = record.error or "stream ended without [DONE]"
    except (httpx.HTTPError, httpx.StreamError, ValueError) as exc:
        record.error, record.end = f"{type(exc).__name__}: {exc}", time.perf_counter()
    return record


async def issue_requests(client: httpx.AsyncClient, config: BenchConfig, prompts: list[str]) -> list[RequestRecord]:
    """Start one request per prompt: Poisson gaps at ``request_rate``, at most ``concurrency`` in flight."""
    concurrency = config.concurrency or (None if config.request_rate else 1)
    gate = asyncio.Semaphore(concurrency) if concurrency else None
    rng = random.Random(config.seed)

    async def one(prompt: str) -> RequestRecord:
        if gate is None:
            return await send_request(client, config, prompt)
        async with gate:
            return await send_request(client, config, prompt)

    tasks = []
    for i, prompt in enumerate(prompts):
        if i and config.request_rate and not math.isinf(config.request_rate):
            await asyncio.sleep(rng.expovariate(config.request_rate))
        tasks.append(asyncio.create_task(one(prompt)))
    return list(await asyncio.gather(*tasks))


async def run_benchmark(config: BenchConfig, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """Warm up, run, and return the summary (see ``metrics.summarize``) stamped with the config.

    ``transport`` replaces the network (tests pass an ``httpx.MockTransport``).
    """
    prompts = get_prompts(config.num_prompts, config.prompts_file)
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    limit = max(config.concurrency or 0, config.num_prompts if config.request_rate else 1, 1)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(config.timeout_s), headers=headers, trust_env=False,
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit), transport=transport,
    ) as client:
        for _ in range(config.warmup):
            probe = await send_request(client, config, prompts[0])
            if probe.error:
                raise RuntimeError(f"warm-up request failed: {probe.error}")
        started = time.perf_counter()
        records = await issue_requests(client, config, prompts)
        duration = time.perf_counter() - started
    summary = summarize(records, duration, max_concurrency=config.concurrency or (None if config.request_rate else 1),
                        request_rate=config.request_rate)
    summary["generated_texts"] = [r.text for r in records]
    return stamp(summary, "serving", config.label, asdict(config))
