"""Load generator for a running dfast_serve (or any OpenAI-compatible) HTTP server.

Follows ``vllm bench serve``: fixed concurrency or Poisson arrivals, streaming requests with
``stream_options.include_usage``, TTFT/TPOT/ITL/E2E with mean/median/p90/p99, JSON out.

    python -m benchmarks.serving --model tiny-mdlm --num-prompts 20 --max-tokens 64 --concurrency 1
    python -m benchmarks.serving --model smollm2 --endpoint /v1/chat/completions --request-rate 2 --seed 0
    python -m benchmarks.serving --model tiny-mdlm --extra-body '{"dfast": {"ultra_fast": false}}' \\
        --label standard --save-result results/standard.json

Other scripts call ``run_benchmark(BenchConfig(...))`` (async) for sweeps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from benchmarks.metrics import RequestRecord, format_table, summarize
from benchmarks.prompts import get_prompts
from benchmarks.results import save_result, stamp
from benchmarks.sse import SSEDecoder, apply_event, parse_payload, record_from_response

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


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, str | None]:
    """The run's config and the --save-result path."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--endpoint", choices=ENDPOINTS, default="/v1/completions")
    ap.add_argument("--model", default="tiny-mdlm", help="served model name (or 'auto')")
    ap.add_argument("--num-prompts", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, help="requests in flight at once (default 1 without --request-rate)")
    ap.add_argument("--request-rate", type=float, help="Poisson arrival rate in requests/s ('inf': all at once)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the arrival process")
    ap.add_argument("--no-stream", action="store_true", help="non-streaming requests (TTFT = full latency)")
    ap.add_argument("--temperature", type=float, help="sent only when given")
    ap.add_argument("--extra-body", type=json.loads, default={}, help='JSON merged into each body, e.g. \'{"dfast": {"ultra_fast": false}}\'')
    ap.add_argument("--prompts-file", help="one prompt per line, or .jsonl with a 'prompt' field")
    ap.add_argument("--warmup", type=int, default=1, help="requests sent (and not counted) before the run")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-request timeout (s)")
    ap.add_argument("--api-key", help="sent as 'Authorization: Bearer <key>'")
    ap.add_argument("--label", help="name of this run in results and plots")
    ap.add_argument("--save-result", help="write the result JSON here")
    args = ap.parse_args(argv)
    if not isinstance(args.extra_body, dict):
        ap.error("--extra-body must be a JSON object")
    config = BenchConfig(
        model=args.model, base_url=args.base_url, endpoint=args.endpoint, num_prompts=args.num_prompts,
        max_tokens=args.max_tokens, concurrency=args.concurrency, request_rate=args.request_rate, seed=args.seed,
        stream=not args.no_stream, temperature=args.temperature, extra_body=args.extra_body,
        prompts_file=args.prompts_file, warmup=args.warmup, timeout_s=args.timeout, api_key=args.api_key,
        label=args.label,
    )
    return config, args.save_result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config, save_path = parse_args(argv)
    try:
        summary = asyncio.run(run_benchmark(config))
    except RuntimeError as exc:  # the warm-up failed: the server is down or rejects the request
        raise SystemExit(f"error: {exc}") from None
    print(format_table(summary))
    for error in sorted({e for e in summary["per_request"]["error"] if e})[:5]:
        print(f"error: {error}")
    if save_path:
        print(f"saved {save_result(summary, save_path)}")
    return summary


if __name__ == "__main__":
    main()
