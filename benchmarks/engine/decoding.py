"""Diffusion decoding strategies side by side, in one run, in-process: what parallel decoding and
the block-wise KV cache buy (tokens per forward pass, throughput, TTFT) and what the cache costs
(how often its output still equals the uncached run's).

    python -m benchmarks.engine.decoding --threads 1 --num-prompts 5   # embedded tiny-mdlm, 64 and 256 tokens
    python -m benchmarks.engine.decoding --max-tokens 64 --num-prompts 4 --variants standard ultra

Variants (greedy; ``--threshold``, ``--confidence``, ``--block-length`` apply to all):

* ``standard``: the standard schedule, one token per forward pass, no cache;
* ``threshold``: threshold parallel decoding (every token of the block at or above the threshold);
* ``threshold+prefix`` / ``threshold+dual``: the same with the prefix / dual KV cache;
* ``ultra``: the ultra-fast streaming scheduler, the server's default;
* ``ultra+threshold`` / ``ultra+threshold+dual``: threshold decoding under ultra-fast, without and
  with the dual cache.

``agrees w/o cache`` counts the prompts whose final text equals the same variant's without the
cache (the cache is approximate: from the second layer on, the cached keys/values are those of
the block's first step). TPF counts answer tokens up to EOS, so the EOS padding a short answer
ends with does not inflate it; variants that change the answer change its length too, hence the
answer tokens column. Each request runs alone (no batching), so timings are single-stream.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.harness.inprocess import load_bench_model, run_request
from benchmarks.harness.metrics import RequestRecord, summarize
from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import add_save_result, finish, markdown_table
from dfast_serve.config import resolve_diffusion_options
from dfast_serve.engine import GenerationRequest, SamplingParams, build_engine
from dfast_serve.models.adapters import DiffusionLM

# label -> (options besides the shared ones, the uncached variant its output is compared with)
VARIANTS: dict[str, tuple[dict[str, Any], str | None]] = {
    "standard": ({"ultra_fast": False}, None),
    "threshold": ({"ultra_fast": False, "decoding": "threshold"}, None),
    "threshold+prefix": ({"ultra_fast": False, "decoding": "threshold", "cache": "prefix"}, "threshold"),
    "threshold+dual": ({"ultra_fast": False, "decoding": "threshold", "cache": "dual"}, "threshold"),
    "ultra": ({"ultra_fast": True}, None),
    "ultra+threshold": ({"ultra_fast": True, "decoding": "threshold"}, None),
    "ultra+threshold+dual": ({"ultra_fast": True, "decoding": "threshold", "cache": "dual"}, "ultra+threshold"),
}
HEADER = ["max tokens", "variant", "answer tokens", "NFE", "TPF", "tok/s", "TTFT p50 (ms)", "E2E p50 (ms)",
          "agrees w/o cache"]


def bench(model: DiffusionLM, args: argparse.Namespace) -> dict[str, Any]:
    """Every variant at every ``--max-tokens`` on an already loaded model; prints the table.

    Variants take turns prompt by prompt, so that a load change on the machine hits them alike;
    a variant's tok/s is its output tokens over the time its own requests took.
    """
    engine = build_engine(model)
    prompts = get_prompts(args.num_prompts, args.prompts_file)
    prompt_ids = [model.encode_chat([{"role": "user", "content": p}]) for p in prompts]
    labels = list(dict.fromkeys(x for label in args.variants for x in (VARIANTS[label][1], label) if x))
    shared = {"block_length": args.block_length, "threshold": args.threshold, "confidence": args.confidence}
    options = {label: resolve_diffusion_options(request={**shared, **VARIANTS[label][0]}, environ={}) for label in labels}
    rows: list[list[Any]] = []
    runs: dict[str, dict[str, Any]] = {}
    for max_tokens in args.max_tokens:
        params = SamplingParams(max_tokens=max_tokens)
        for label in labels:
            for _ in range(args.warmup):
                run_request(engine, GenerationRequest(prompt_ids[0], params, options[label]))
        records: dict[str, list[RequestRecord]] = {label: [] for label in labels}
        for ids in prompt_ids:
            for label in labels:
                records[label].append(run_request(engine, GenerationRequest(ids, params, options[label])))
        for label in args.variants:
            done = records[label]
            summary = summarize(done, sum(r.end - r.start for r in done if r.end is not None))
            summary.update(options=options[label].model_dump(), generated_texts=[r.text for r in done])
            agree = None
            if (reference := VARIANTS[label][1]) is not None:
                same = sum(a.text == b.text for a, b in zip(done, records[reference]))
                summary["agrees_without_cache"] = same / len(done)
                agree = f"{same}/{len(done)}"
            runs[f"{label}@{max_tokens}"] = summary
            rows.append([max_tokens, label, summary["total_output_tokens"] / len(done), summary["mean_nfe_total"],
                         summary["mean_tpf"], summary["output_throughput"], summary["median_ttft_ms"],
                         summary["median_e2el_ms"], agree])
    config = {**vars(args), "model": model.name, "device": str(model.device), "torch_threads": torch.get_num_threads()}
    return finish({"header": HEADER, "rows": rows, "runs": runs}, "decoding", config,
                  table=markdown_table(HEADER, rows), out=args.save_result, label=args.label)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["embedded", "llada", "dream", "llada-remote", "dream-remote"], default="embedded")
    ap.add_argument("--path", help="checkpoint directory or hub id (every source but embedded)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--num-prompts", type=int, default=10)
    ap.add_argument("--prompts-file", help="one prompt per line, or .jsonl with a 'prompt' field")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--confidence", choices=["probability", "margin", "entropy"], default="probability")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted requests before each variant")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--label", default="decoding", help="name of this run in the result")
    add_save_result(ap, "decoding")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    model = load_bench_model(args, "diffusion", "diffusion-decoding")
    assert isinstance(model, DiffusionLM)
    return bench(model, args)


if __name__ == "__main__":
    main()
