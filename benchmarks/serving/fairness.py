"""A normal request's latency beside the worst valid request, in-process through the replica's step loop.

    python -m benchmarks.serving.fairness --repeats 2          # ~1 min idle on one CPU thread

The worst valid request for the embedded tiny-mdlm (context 1024): the longest canvas, the largest
block ``max_block_length`` allows, the standard schedule (one pass per token), temperature 1 with
top-p 0.9 and entropy confidence. The normal request: a 32-token chat answer with the defaults. Each
variant runs the normal request alone, then beside the worst one (started first), through
``serve.step_loop.StepLoop`` as a replica does, with the engine's ``step_token_budget`` (the
replica default) and without one (every request every step, as before). Variants take turns.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import torch

from benchmarks.harness.results import add_save_result, finish, markdown_table
from dfast_serve.config import DiffusionOptions, ReplicaConfig
from dfast_serve.engine import GenerationRequest, SamplingParams, build_engine
from dfast_serve.models.embedded import load_tiny_mdlm
from dfast_serve.serve.step_loop import StepLoop

HEADER = ["engine", "normal alone p50 (s)", "beside the worst p50 (s)", "ratio"]


def requests(model: Any, block_cap: int) -> tuple[GenerationRequest, GenerationRequest]:
    normal_ids = model.encode_chat([{"role": "user", "content": "Recite Psalms 23:1."}])
    normal = GenerationRequest(normal_ids, SamplingParams(max_tokens=32), DiffusionOptions())
    worst_ids = model.encode_chat([{"role": "user", "content": "Recite Genesis 1:1."}])
    max_tokens = model.max_context - len(worst_ids)
    options = DiffusionOptions(ultra_fast=False, block_length=min(block_cap, max_tokens), confidence="entropy")
    worst = GenerationRequest(worst_ids, SamplingParams(max_tokens=max_tokens, temperature=1.0, top_p=0.9, seed=0), options)
    return normal, worst


async def timed_normal(loop: StepLoop, normal: GenerationRequest, worst: GenerationRequest | None) -> float:
    background = loop.submit(worst) if worst is not None else None
    if background is not None:  # the worst request has made a pass before the normal one arrives
        steps = loop.steps
        while loop.steps == steps:
            await asyncio.sleep(0.01)
    start = time.perf_counter()
    async for _ in loop.submit(normal).chunks():
        pass
    elapsed = time.perf_counter() - start
    if background is not None:
        background.cancel()
    return elapsed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a replica with num_cpus < 2 has one)")
    add_save_result(ap, "fairness")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_tiny_mdlm()
    defaults = ReplicaConfig()
    normal, worst = requests(model, defaults.max_block_length)
    variants = {f"step_token_budget {defaults.step_token_budget}": defaults.step_token_budget, "no budget": None}
    loops = {label: StepLoop(build_engine(model, 8, budget), name=label) for label, budget in variants.items()}
    times: dict[str, dict[str, list[float]]] = {label: {"alone": [], "beside": []} for label in variants}

    async def measure() -> None:
        for _ in range(args.repeats):
            for label, loop in loops.items():
                times[label]["alone"].append(await timed_normal(loop, normal, None))
                times[label]["beside"].append(await timed_normal(loop, normal, worst))

    asyncio.run(measure())
    rows = []
    for label, t in times.items():
        alone, beside = statistics.median(t["alone"]), statistics.median(t["beside"])
        rows.append([label, alone, beside, beside / alone])
    config = {**vars(args), "normal_max_tokens": 32, "worst_max_tokens": worst.params.max_tokens,
              "worst_block_length": worst.diffusion.block_length}
    return finish({"header": HEADER, "rows": rows, "times": times}, "fairness", config,
                  table=markdown_table(HEADER, rows), out=args.save_result)


if __name__ == "__main__":
    main()
