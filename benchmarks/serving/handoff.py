"""How long a chunk waits between the engine step that made it and the event loop that ships it.

    python -m benchmarks.serving.handoff --rounds 4            # ~2 min on one CPU thread

A replica's step thread runs the engine; its asyncio loop picks each step's chunks up and streams them.
The step thread holds the GIL whenever it runs Python between torch ops, so the loop, woken by the
hand-over, waits for the GIL up to ``sys.getswitchinterval()`` (Python's default: 5 ms). This runs the
replica's ``StepLoop`` in-process on tiny-mdlm (one torch thread, as a replica with ``num_cpus`` < 2
has) under each switch interval, variants taking turns, and reports per chunk the wait from the end of
its step to its arrival on the loop (the inter-chunk overhead of the waterfall benchmark), the TTFT,
and the throughput (what a shorter interval might cost the step thread). ``replica.gil_switch_interval_ms``
is the setting.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import torch

from benchmarks.harness.results import add_save_result, finish, markdown_table
from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import GenerationRequest, SamplingParams, build_engine
from dfast_serve.models.embedded import load_tiny_mdlm
from dfast_serve.serve.step_loop import StepLoop

HEADER = ["switch interval (ms)", "concurrent", "hand-over wait p50 (ms)", "p90 (ms)", "p99 (ms)", "TTFT p50 (ms)",
          "tokens/s", "chunks"]
WORKLOADS = {  # many chunks (one pass per token) and the default ultra-fast schedule
    "standard": DiffusionOptions(ultra_fast=False, block_length=8, steps=64),
    "ultra-fast": DiffusionOptions(),
}


def stamp_chunks(engine: Any) -> None:
    """Mark every chunk with the time its step ended (the moment it could be handed over)."""
    step = engine.step

    def stamped(sequences: list) -> None:
        step(sequences)
        ended = time.perf_counter()
        for sequence in sequences:
            for chunk in sequence.pending:
                chunk.step_ended = ended

    engine.step = stamped


async def run_once(loop: StepLoop, requests: list[GenerationRequest]) -> tuple[list[float], list[float], int, float]:
    """Concurrent requests through the loop: hand-over waits (s), TTFTs (s), tokens, wall time (s)."""
    waits: list[float] = []

    async def one(request: GenerationRequest) -> tuple[float, int]:
        started, ttft, tokens = time.perf_counter(), None, 0
        async for chunk in loop.submit(request).chunks():
            arrived = time.perf_counter()
            waits.append(arrived - chunk.step_ended)
            if ttft is None and chunk.new_text:
                ttft = arrived - started
            tokens += chunk.new_tokens
        return ttft or 0.0, tokens

    started = time.perf_counter()
    results = await asyncio.gather(*(one(r) for r in requests))
    wall = time.perf_counter() - started
    return waits, [t for t, _ in results], sum(n for _, n in results), wall


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intervals-ms", default="5,1,0.5,0.2", help="comma-separated switch intervals to compare")
    ap.add_argument("--concurrency", default="1,4", help="comma-separated numbers of concurrent requests")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="standard")
    ap.add_argument("--threads", type=int, default=1)
    add_save_result(ap, "handoff")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    intervals = [float(x) for x in args.intervals_ms.split(",")]
    concurrency = [int(x) for x in args.concurrency.split(",")]
    model = load_tiny_mdlm()
    engine = build_engine(model, 8, 2048)
    stamp_chunks(engine)
    loop = StepLoop(engine, name="handoff")
    prompts = ["Recite Genesis 1:1.", "Recite Psalms 23:1.", "Who was Moses?", "Recite John 3:16."]

    def requests(n: int) -> list[GenerationRequest]:
        return [GenerationRequest(model.encode_chat([{"role": "user", "content": prompts[i % len(prompts)]}]),
                                  SamplingParams(max_tokens=args.max_tokens), WORKLOADS[args.workload])
                for i in range(n)]

    samples: dict[tuple[float, int], dict[str, list[float]]] = {
        (ms, n): {"waits": [], "ttfts": [], "tokens": [], "walls": []} for ms in intervals for n in concurrency}
    default_interval = sys.getswitchinterval()

    async def measure() -> None:
        await run_once(loop, requests(1))  # warm-up
        for _ in range(args.rounds):
            for n in concurrency:
                for ms in intervals:
                    sys.setswitchinterval(ms / 1000)
                    waits, ttfts, tokens, wall = await run_once(loop, requests(n))
                    bucket = samples[(ms, n)]
                    bucket["waits"] += waits
                    bucket["ttfts"] += ttfts
                    bucket["tokens"].append(tokens)
                    bucket["walls"].append(wall)

    try:
        asyncio.run(measure())
    finally:
        sys.setswitchinterval(default_interval)
    rows = []
    for (ms, n), s in samples.items():
        waits = sorted(s["waits"])

        def pct(q: float) -> float:
            return 1000 * waits[min(len(waits) - 1, int(q * len(waits)))]

        rows.append([ms, n, pct(0.5), pct(0.9), pct(0.99), 1000 * statistics.median(s["ttfts"]),
                     sum(s["tokens"]) / sum(s["walls"]), len(waits)])
    return finish({"header": HEADER, "rows": rows}, "handoff", args, table=markdown_table(HEADER, rows),
                  out=args.save_result)


if __name__ == "__main__":
    main()
