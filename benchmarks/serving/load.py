"""Served TTFT/TPOT/ITL/E2E under load: the load generator against a running dfast_serve (or any
OpenAI-compatible) server, as ``vllm bench serve`` does it (fixed concurrency or Poisson arrivals,
streaming with usage, mean/median/p90/p99, JSON out).

    python -m benchmarks.serving.load --model tiny-mdlm --num-prompts 20 --max-tokens 64 --concurrency 1
    python -m benchmarks.serving.load --model smollm2-135m --endpoint /v1/chat/completions --request-rate 2 --seed 0
    python -m benchmarks.serving.load --model tiny-mdlm --extra-body '{"dfast": {"ultra_fast": false}}' --label standard

Other drivers call ``benchmarks.harness.client.run_benchmark(BenchConfig(...))`` for sweeps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from benchmarks.harness.client import ENDPOINTS, BenchConfig, run_benchmark
from benchmarks.harness.metrics import format_table
from benchmarks.harness.results import add_save_result, finish


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
    add_save_result(ap, "serving")
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
    for error in sorted({e for e in summary["per_request"]["error"] if e})[:5]:
        print(f"error: {error}")
    return finish(summary, "serving", summary["config"], table=format_table(summary), out=save_path,
                  label=config.label)


if __name__ == "__main__":
    main()
