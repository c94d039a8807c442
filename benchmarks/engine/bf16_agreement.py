"""How often a greedy bf16 answer changes with its batch mates, default batching vs ``batch_invariance:
strict``, and what strict costs. In-process (the engines as the replica's step loop drives them).

    python -m benchmarks.engine.bf16_agreement              # ~5 min on 2 shared CPU cores
    python -m benchmarks.engine.bf16_agreement --prompts 4 --max-tokens 16 --ar-max-tokens 8 --save-result /tmp/a.json

Models: the embedded ones, trained weights (agreement means little on random ones), in bf16: tiny-mdlm
(diffusion, under ``--diffusion-options``, each a named set of ``DiffusionOptions``) and SmolLM2-135M (AR).
Every prompt (the built-in set, chat-templated, 9-40 tokens) runs alone, then in each *mate mix*: the
prompts split into groups of 2, of 4 and all together, every group's requests started at once with
``max_batch_size`` 8. A request agrees when its greedy answer's tokens equal its answer alone in the same
mode; for one that does not, *tokens to first divergence* is the index of the first answer token that
differs. EOS is ignored (``ignore_eos``), so every answer runs ``max_tokens`` and every run does the same
work. Cost: the all-together workload's tokens/s (median of ``--rounds``, the order of the variants flipping
each round: the machine is shared) and forward passes under default batching, strict, and batch size 1
(``max_batch_size: 1``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from benchmarks.engine.native_dllm import first_divergence
from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import add_save_result, finish, markdown_table
from dfast_serve.config import BatchInvariance, DiffusionOptions
from dfast_serve.engine import Engine, GenerationRequest, SamplingParams, build_engine

DIFFUSION_OPTIONS = {
    "ultra": DiffusionOptions(),  # the shipped defaults: ultra-fast streaming, block 32, no cache
    "threshold+dual": DiffusionOptions(decoding="threshold", threshold=0.9, cache="dual"),
}
GROUP_SIZES = (2, 4, 0)  # 0: every prompt in one group
HEADER = ["model", "options", "mode", "comparisons", "agree", "agreement", "first divergence (median, min)"]
COST_HEADER = ["model", "options", "batching", "tokens/s (median)", "vs default", "forward passes", "wall (s, median)"]


def run_together(engine: Engine, requests: list[GenerationRequest]) -> tuple[list[list[int]], float, int]:
    """All ``requests`` started at once and stepped until done: each one's answer tokens, wall time, passes."""
    passes = engine.forward_passes
    started = time.perf_counter()
    seqs = [engine.start(r) for r in requests]
    while live := [s for s in seqs if not s.finished]:
        engine.step_sequences(live)
        for s in live:
            s.drain()
    return [list(s.detokenizer.token_ids) for s in seqs], time.perf_counter() - started, engine.forward_passes - passes


def groups_of(n: int, size: int) -> list[list[int]]:
    size = size or n
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def agreement(model: Any, requests: list[GenerationRequest], mode: BatchInvariance, group_sizes: tuple[int, ...],
              max_batch_size: int) -> dict[str, Any]:
    """Each request alone vs in every mate mix, in ``mode``."""
    engine = build_engine(model, max_batch_size, None, mode)
    alone = [run_together(engine, [r])[0][0] for r in requests]
    comparisons: list[dict[str, Any]] = []
    for size in group_sizes:
        for group in groups_of(len(requests), size):
            answers, _, _ = run_together(engine, [requests[i] for i in group])
            for i, answer in zip(group, answers):
                same = answer == alone[i]
                comparisons.append({"prompt": i, "mix": size or len(requests), "mates": [j for j in group if j != i],
                                    "agree": same, "first_divergence": None if same else first_divergence(answer, alone[i]),
                                    "tokens": len(answer), "tokens_alone": len(alone[i])})
    diverged = [c["first_divergence"] for c in comparisons if not c["agree"]]
    return {"comparisons": comparisons, "agree": len(comparisons) - len(diverged), "total": len(comparisons),
            "agreement": (len(comparisons) - len(diverged)) / len(comparisons),
            "first_divergence_median": statistics.median(diverged) if diverged else None,
            "first_divergence_min": min(diverged) if diverged else None}


def cost(model: Any, requests: list[GenerationRequest], max_batch_size: int, rounds: int) -> dict[str, Any]:
    """The all-together workload under default batching, strict and batch size 1, ``rounds`` times each."""
    variants: dict[str, tuple[int, BatchInvariance]] = {"off": (max_batch_size, "off"), "strict": (max_batch_size, "strict"),
                                                        "batch1": (1, "off")}
    runs: dict[str, list[tuple[int, float, int]]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            size, mode = variants[name]
            answers, wall, passes = run_together(build_engine(model, size, None, mode), requests)
            runs[name].append((sum(map(len, answers)), wall, passes))
    out = {}
    for name, rs in runs.items():
        out[name] = {"tokens_per_s": statistics.median(t / w for t, w, _ in rs), "wall_s": statistics.median(w for _, w, _ in rs),
                     "forward_passes": rs[0][2], "tokens": rs[0][0], "runs": rs}
    return out


def measure(model: Any, name: str, options_name: str, requests: list[GenerationRequest], modes: dict[str, tuple],
            args: argparse.Namespace, results: dict[str, Any], rows: list, cost_rows: list) -> None:
    for mode, group_sizes in modes.items():
        print(f"-- {name} {options_name} {mode}: agreement", flush=True)
        r = agreement(model, requests, mode, group_sizes, args.max_batch_size)
        results[f"{name}-{options_name}-{mode}"] = r
        rows.append([name, options_name, mode, r["total"], r["agree"], r["agreement"],
                     f"{r['first_divergence_median']}, {r['first_divergence_min']}" if r["first_divergence_median"]
                     is not None else "-"])
    print(f"-- {name} {options_name}: cost", flush=True)
    c = cost(model, requests, args.max_batch_size, args.rounds)
    results[f"{name}-{options_name}-cost"] = c
    labels = {"off": f"default (max_batch_size {args.max_batch_size})",
              "strict": f"strict (max_batch_size {args.max_batch_size})", "batch1": "max_batch_size 1"}
    for variant, label in labels.items():
        v = c[variant]
        cost_rows.append([name, options_name, label, v["tokens_per_s"], v["tokens_per_s"] / c["off"]["tokens_per_s"],
                          v["forward_passes"], v["wall_s"]])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64, help="diffusion answer length")
    parser.add_argument("--ar-max-tokens", type=int, default=24)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--diffusion-options", default=",".join(DIFFUSION_OPTIONS), help="names, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each cost variant")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 on a shared 2-core machine is slower)")
    parser.add_argument("--skip-ar", action="store_true")
    add_save_result(parser, "bf16_agreement")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dfast_serve.models.embedded import load_smollm2, load_tiny_mdlm

    texts = get_prompts(args.prompts)
    results: dict[str, Any] = {}
    rows: list[list[Any]] = []
    cost_rows: list[list[Any]] = []
    started = time.perf_counter()
    tiny = load_tiny_mdlm(dtype="bfloat16")
    for options_name in args.diffusion_options.split(","):
        options = DIFFUSION_OPTIONS[options_name]
        requests = [GenerationRequest(tiny.encode_chat([{"role": "user", "content": t}]),
                                      SamplingParams(max_tokens=args.max_tokens, ignore_eos=True), options, f"p{i}")
                    for i, t in enumerate(texts)]
        measure(tiny, "tiny-mdlm", options_name, requests, {"off": GROUP_SIZES, "strict": GROUP_SIZES}, args,
                results, rows, cost_rows)
    if not args.skip_ar:
        smol = load_smollm2(dtype="bfloat16")
        requests = [GenerationRequest(smol.encode_chat([{"role": "user", "content": t}]),
                                      SamplingParams(max_tokens=args.ar_max_tokens, ignore_eos=True), None, f"p{i}")
                    for i, t in enumerate(texts)]
        measure(smol, "smollm2-135m", "greedy", requests, {"off": GROUP_SIZES, "strict": GROUP_SIZES}, args, results,
                rows, cost_rows)
    costs = markdown_table(COST_HEADER, cost_rows)
    return finish({"results": results, "cost_table": costs, "wall_s": time.perf_counter() - started,
                   "torch": torch.__version__}, "bf16_agreement", args,
                  table=markdown_table(HEADER, rows) + "\n" + costs, out=args.save_result)


if __name__ == "__main__":
    main()
