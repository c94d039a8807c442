"""A normal request's latency beside the worst valid request, in-process through the replica's step loop.

    python -m benchmarks.serving.fairness --repeats 2          # idle on one CPU thread: ~1 min diffusion,
                                                              # AR minutes (the worst prompt's prefill)

Both engines, side by side in one run (``--engines`` picks):

* **diffusion**, the embedded tiny-mdlm (context 1024). The worst valid request: the longest canvas,
  the largest block ``max_block_length`` allows, the standard schedule (one pass per token),
  temperature 1 with top-p 0.9 and entropy confidence. It has made a pass before the normal one arrives.
* **ar**, the embedded SmolLM2-135M-Instruct in float32 (a CPU replica's dtype). The worst valid request:
  the longest prompt the replica accepts (the model's context, ``--ar-context`` to cap it, less
  ``--ar-worst-answer`` answer tokens: max_tokens fills the rest). The normal request arrives while the
  worst one's first pass (its prefill, or first prefill chunk) is running: what a long prompt can do to a
  request behind it.

The normal request: a 32-token chat answer with the defaults. Each variant runs the normal request alone,
then beside the worst one (started first), through ``serve.step_loop.StepLoop`` as a replica does, with
the engine's ``step_token_budget`` (the replica default) and without one (diffusion: every request every
step; AR: every prompt prefilled whole). Variants take turns. Reported: the normal request's total time
and time to first token (TTFT), alone and beside the worst, and their ratios.
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
from dfast_serve.models.embedded import load_smollm2, load_tiny_mdlm
from dfast_serve.serve.step_loop import StepLoop

HEADER = ["engine", "variant", "normal alone p50 (s)", "beside the worst p50 (s)", "ratio",
          "TTFT alone p50 (s)", "TTFT beside p50 (s)", "TTFT ratio"]
NORMAL_TOKENS = 32


def requests(model: Any, block_cap: int) -> tuple[GenerationRequest, GenerationRequest]:
    normal_ids = model.encode_chat([{"role": "user", "content": "Recite Psalms 23:1."}])
    normal = GenerationRequest(normal_ids, SamplingParams(max_tokens=NORMAL_TOKENS), DiffusionOptions())
    worst_ids = model.encode_chat([{"role": "user", "content": "Recite Genesis 1:1."}])
    max_tokens = model.max_context - len(worst_ids)
    options = DiffusionOptions(ultra_fast=False, block_length=min(block_cap, max_tokens), confidence="entropy")
    worst = GenerationRequest(worst_ids, SamplingParams(max_tokens=max_tokens, temperature=1.0, top_p=0.9, seed=0), options)
    return normal, worst


def ar_requests(model: Any, context: int, answer: int) -> tuple[GenerationRequest, GenerationRequest]:
    """The normal chat request, and a prompt of ``context - answer`` tokens (Genesis, repeated) with
    ``max_tokens`` ``answer``: together the whole context the replica accepts."""
    normal = GenerationRequest(model.encode_chat([{"role": "user", "content": "Recite Psalms 23:1."}]),
                               SamplingParams(max_tokens=NORMAL_TOKENS))
    verse = model.encode_prompt(" In the beginning God created the heaven and the earth.")
    prompt = (verse * (context // len(verse) + 1))[: context - answer]
    worst = GenerationRequest(prompt, SamplingParams(max_tokens=answer, temperature=1.0, top_p=0.9, seed=0))
    return normal, worst


async def timed_normal(loop: StepLoop, normal: GenerationRequest, worst: GenerationRequest | None,
                       arrive_during_first_pass: bool = False) -> tuple[float, float]:
    """The normal request's total time and time to its first chunk; with ``worst``, that one is started first
    and the normal one arrives after its first pass (or, ``arrive_during_first_pass``, once it is running)."""
    background = loop.submit(worst) if worst is not None else None
    if background is not None:
        steps = loop.steps
        while (loop.active == 0) if arrive_during_first_pass else (loop.steps == steps):
            await asyncio.sleep(0.01)
    start = time.perf_counter()
    first = None
    async for _ in loop.submit(normal).chunks():
        if first is None:
            first = time.perf_counter() - start
    elapsed = time.perf_counter() - start
    if background is not None:
        background.cancel()
        while loop.active or loop.waiting:  # the worst one is dropped before the next measurement
            await asyncio.sleep(0.01)
    return elapsed, first if first is not None else elapsed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a replica with num_cpus < 2 has one)")
    ap.add_argument("--engines", default="diffusion,ar", help="comma-separated: diffusion, ar")
    ap.add_argument("--ar-context", type=int, default=None,
                    help="cap on the AR worst request's prompt + max_tokens (default: the model's context)")
    ap.add_argument("--ar-worst-answer", type=int, default=256, help="the AR worst request's max_tokens")
    ap.add_argument("--budgets", default=None,
                    help="comma-separated step_token_budget values to compare, 'none' for no budget "
                         "(default: the replica default and none)")
    ap.add_argument("--ar-pacing", default=f"{ReplicaConfig().prefill_chunk_decodes}",
                    help="comma-separated prefill_chunk_decodes values for the AR variants with a budget, 'none' "
                         "for chunks sized by the token budget alone (default: the replica default)")
    ap.add_argument("--pass-piece-tokens", default=f"{ReplicaConfig().pass_piece_tokens}",
                    help="comma-separated pass_piece_tokens values for the diffusion variants with a budget, 'none' "
                         "for passes run whole (default: the replica default)")
    add_save_result(ap, "fairness")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    defaults = ReplicaConfig()
    chosen = args.budgets.split(",") if args.budgets else [str(defaults.step_token_budget), "none"]
    budgets = {"no budget" if b == "none" else f"step_token_budget {b}": None if b == "none" else int(b) for b in chosen}
    engines = args.engines.split(",")
    cases: dict[tuple[str, str], tuple[StepLoop, GenerationRequest, GenerationRequest, bool]] = {}
    config: dict[str, Any] = {**vars(args), "normal_max_tokens": NORMAL_TOKENS}
    if "diffusion" in engines:
        model = load_tiny_mdlm()
        normal, worst = requests(model, defaults.max_block_length)
        pieces = [None if p == "none" else int(p) for p in args.pass_piece_tokens.split(",")]
        for label, budget in budgets.items():
            for piece in pieces if budget is not None else [None]:
                name = label if budget is None else f"{label}, pass_piece_tokens {piece}"
                loop = StepLoop(build_engine(model, defaults.max_batch_size, budget, pass_piece_tokens=piece),
                                name=f"diffusion {name}")
                cases["diffusion", name] = (loop, normal, worst, False)
        config |= {"diffusion_worst_max_tokens": worst.params.max_tokens,
                   "diffusion_worst_block_length": worst.diffusion.block_length}
    if "ar" in engines:
        ar_model = load_smollm2(dtype="float32")
        context = min(ar_model.max_context, args.ar_context or ar_model.max_context, defaults.max_running_tokens)
        normal, worst = ar_requests(ar_model, context, args.ar_worst_answer)
        pacings = [None if p == "none" else float(p) for p in args.ar_pacing.split(",")]
        for label, budget in budgets.items():
            for pacing in pacings if budget is not None else [None]:
                engine = build_engine(ar_model, defaults.max_batch_size, budget, max_running=defaults.max_ongoing_requests,
                                      max_running_tokens=defaults.max_running_tokens, prefill_chunk_decodes=pacing)
                engine.validate(worst)
                name = label if budget is None else f"{label}, prefill_chunk_decodes {pacing}"
                cases["ar", name] = (StepLoop(engine, name=f"ar {name}"), normal, worst, True)
        config |= {"ar_worst_prompt_tokens": len(worst.prompt_ids), "ar_worst_max_tokens": worst.params.max_tokens,
                   "ar_normal_prompt_tokens": len(normal.prompt_ids)}
    times: dict[str, dict[str, list[float]]] = {
        f"{e} / {v}": {"alone": [], "beside": [], "ttft_alone": [], "ttft_beside": []} for e, v in cases}

    async def measure() -> None:
        for loop, normal_req, _, _ in cases.values():  # warm-up: lazy initialisation, the AR pacer's first passes
            for _ in range(2):
                await timed_normal(loop, normal_req, None)
        for _ in range(args.repeats):
            for (engine_kind, label), (loop, normal_req, worst_req, during) in cases.items():
                t = times[f"{engine_kind} / {label}"]
                total, ttft = await timed_normal(loop, normal_req, None)
                t["alone"].append(total)
                t["ttft_alone"].append(ttft)
                total, ttft = await timed_normal(loop, normal_req, worst_req, during)
                t["beside"].append(total)
                t["ttft_beside"].append(ttft)

    asyncio.run(measure())
    rows = []
    for (engine_kind, label) in cases:
        t = {k: statistics.median(v) for k, v in times[f"{engine_kind} / {label}"].items()}
        rows.append([engine_kind, label, t["alone"], t["beside"], t["beside"] / t["alone"], t["ttft_alone"],
                     t["ttft_beside"], t["ttft_beside"] / t["ttft_alone"]])
    return finish({"header": HEADER, "rows": rows, "times": times}, "fairness", config,
                  table=markdown_table(HEADER, rows), out=args.save_result)


if __name__ == "__main__":
    main()
