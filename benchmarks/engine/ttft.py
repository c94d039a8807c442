"""In-process TTFT (no Ray, no HTTP) against the forward-pass floor, per engine and schedule.

Runs an engine's generator directly and timestamps each chunk as it is yielded. The *floor* is
one model forward pass over prompt + first block (diffusion: ``model.logits`` on the prompt plus
``block_length`` mask tokens; AR: the prefill of the prompt), median of several, measured per
prompt in the same run; TTFT/floor says how far streaming is from that bound. For diffusion the
pass over the whole canvas (prompt + ``max_tokens`` masks, what the engine really runs) is
reported too.

    python -m benchmarks.engine.ttft --engine diffusion --mode ultra --max-tokens 64 --num-prompts 10
    python -m benchmarks.engine.ttft --engine diffusion --mode standard --save-result results/eng-standard.json
    python -m benchmarks.engine.ttft --engine ar --mode nonstream --max-tokens 32
    python -m benchmarks.engine.ttft --engine diffusion --max-tokens 64 --num-prompts 1 --timeline timeline.png
    python -m benchmarks.engine.ttft --engine diffusion --mode standard --decoding threshold --cache prefix

Modes: ``ultra`` / ``standard`` stream with the ultra-fast or standard diffusion schedule (the
same thing for AR); ``nonstream`` runs the standard schedule and records one chunk at the end.
``--decoding/--threshold/--confidence/--cache`` set the diffusion options of the same names
(threshold parallel decoding, block-wise KV cache); TPF is tokens per forward pass.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.harness.inprocess import floor_ids, forward_time, load_bench_model, run_request
from benchmarks.harness.metrics import add_stats, format_table, summarize, ttft
from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import add_save_result, finish
from dfast_serve.config import DiffusionOptions, resolve_diffusion_options
from dfast_serve.engine import Engine, GenerationRequest, SamplingParams, build_engine
from dfast_serve.models.adapters import CausalLM, DiffusionLM

MODES = ("ultra", "standard", "nonstream")
Timeline = list[tuple[float, int]]  # (ms since start, answer tokens streamed so far)


def diffusion_options(mode: str, block_length: int, steps: int | None,
                      decoding: dict[str, Any] | None = None) -> DiffusionOptions:
    """The options a mode runs with; ``decoding`` adds any other ``DiffusionOptions`` fields."""
    request: dict[str, Any] = {"block_length": block_length, "ultra_fast": mode == "ultra", **(decoding or {})}
    if steps:
        request["steps"] = steps
    return resolve_diffusion_options(request=request, environ={})


def decoding_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"decoding": args.decoding, "threshold": args.threshold, "confidence": args.confidence, "cache": args.cache}


def diffusion_timelines(engine: Engine, prompt_ids: list[int], params: SamplingParams,
                        block_length: int, steps: int | None, decoding: dict[str, Any] | None = None) -> dict[str, Timeline]:
    """Tokens streamed vs time for one request, under the ultra-fast and standard schedules."""
    series: dict[str, Timeline] = {}
    for mode in ("ultra", "standard"):
        points: Timeline = []
        request = GenerationRequest(prompt_ids, params, diffusion_options(mode, block_length, steps, decoding))
        run_request(engine, request, on_chunk=lambda ms, tokens: points.append((ms, tokens)))
        series[mode] = points
    return series


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["diffusion", "ar"], default="diffusion")
    ap.add_argument("--source", choices=["embedded", "llada", "dream", "llada-remote", "dream-remote", "hf"], default="embedded")
    ap.add_argument("--path", help="checkpoint directory or hub id (every source but embedded)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--mode", choices=MODES, default="ultra")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=10)
    ap.add_argument("--prompts-file", help="one prompt per line, or .jsonl with a 'prompt' field")
    ap.add_argument("--no-chat", action="store_true", help="encode prompts raw, without the chat template")
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, help="diffusion denoising steps (default: one per token)")
    ap.add_argument("--decoding", choices=["schedule", "threshold"], default="schedule",
                    help="diffusion: commit the schedule's count per step, or every token above --threshold")
    ap.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of --decoding threshold")
    ap.add_argument("--confidence", choices=["probability", "margin", "entropy"], default="probability")
    ap.add_argument("--cache", choices=["none", "prefix", "dual"], default="none", help="diffusion block-wise KV cache")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1, help="uncounted requests before the run")
    ap.add_argument("--floor-repeats", type=int, default=5, help="forward passes per floor median")
    ap.add_argument("--threads", type=int,
                    help="torch CPU threads (a replica with num_cpus: N gets N, since Ray sets OMP_NUM_THREADS)")
    ap.add_argument("--label", help="name of this run in results and plots")
    add_save_result(ap, "engine")
    ap.add_argument("--timeline", help="PNG: tokens streamed vs time for the first prompt, ultra vs standard (diffusion)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Load the model the arguments name and benchmark it."""
    args = parse_args(argv)
    return bench(load_bench_model(args, args.engine, f"{args.engine}-bench"), args)


def bench(model: DiffusionLM | CausalLM, args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark ``args`` describe on an already loaded model (``--engine/--source`` ignored)."""
    engine = build_engine(model)
    is_diffusion = isinstance(model, DiffusionLM)
    options = diffusion_options(args.mode, args.block_length, args.steps, decoding_options(args)) if is_diffusion else None
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    prompts = get_prompts(args.num_prompts, args.prompts_file)
    encode = model.encode_prompt if args.no_chat else (lambda p: model.encode_chat([{"role": "user", "content": p}]))
    prompt_ids = [encode(p) for p in prompts]
    stream = args.mode != "nonstream"

    for _ in range(args.warmup):
        run_request(engine, GenerationRequest(prompt_ids[0], params, options), stream)
    window = min(args.block_length, args.max_tokens)
    floors: dict[tuple[int, ...], float] = {}
    canvases: dict[tuple[int, ...], float] = {}
    for ids in map(tuple, prompt_ids):
        if ids not in floors:
            floors[ids] = forward_time(model, floor_ids(model, list(ids), window), args.floor_repeats)
            if is_diffusion:
                canvases[ids] = forward_time(model, floor_ids(model, list(ids), args.max_tokens), args.floor_repeats)

    started = time.perf_counter()
    records = [run_request(engine, GenerationRequest(ids, params, options), stream) for ids in prompt_ids]
    summary = summarize(records, time.perf_counter() - started)

    floor_ms = [floors[tuple(ids)] * 1000.0 for ids in prompt_ids]
    ratios = [None if (t := ttft(r)) is None else t * 1000.0 / f for r, f in zip(records, floor_ms)]
    add_stats(summary, "floor", floor_ms, "_ms")
    add_stats(summary, "ttft_over_floor", [r for r in ratios if r is not None])
    summary["per_request"].update({"floor_ms": floor_ms, "ttft_over_floor": ratios})
    if is_diffusion:
        canvas_ms = [canvases[tuple(ids)] * 1000.0 for ids in prompt_ids]
        add_stats(summary, "canvas_pass", canvas_ms, "_ms")
        summary["per_request"]["canvas_pass_ms"] = canvas_ms
    summary["generated_texts"] = [r.text for r in records]
    config = {k: v for k, v in vars(args).items() if k not in ("save_result", "timeline")}
    config.update(model=model.name, device=str(model.device), torch_threads=torch.get_num_threads(),
                  diffusion_options=options.model_dump() if options else None)
    mode_name = args.mode if is_diffusion or not stream else "stream"  # ultra/standard mean nothing to AR
    kind = "diffusion" if is_diffusion else "ar"
    summary["label"] = args.label or f"{kind}-{mode_name}"

    if args.timeline:
        if not is_diffusion:
            raise SystemExit("--timeline plots diffusion schedules; use --engine diffusion")
        from benchmarks.harness.plots import plot_timeline

        series = diffusion_timelines(engine, prompt_ids[0], params, args.block_length, args.steps, decoding_options(args))
        summary["timeline"] = {mode: [list(p) for p in points] for mode, points in series.items()}
        plot_timeline(series, args.timeline, floor_ms=floor_ms[0], title=f"{model.name}: {prompts[0]!r}")
        print(f"timeline: {args.timeline}")
    return finish(summary, "engine", config, table=format_table(summary, title="Engine Benchmark Result"),
                  out=args.save_result, label=summary["label"])


if __name__ == "__main__":
    main()
