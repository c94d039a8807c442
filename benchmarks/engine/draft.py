"""How fast the native stream's ``draft`` converges, and what it costs (in-process, no Ray, no HTTP).

For each prompt, one diffusion generation with ``draft=True``; after every forward pass the page's
view (the committed text so far + the draft) is compared with the final answer by character edit
distance, normalised by the answer's length (0 = the draft already is the answer). Cost: the draft's
bytes per chunk (JSON-encoded, as the native SSE event carries it; also the event's size without it)
and the time ``draft_text`` takes per pass, next to the pass's own step time.

    python -m benchmarks.engine.draft --num-prompts 3 --max-tokens 48      # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from typing import Any

from dfast_serve.api.serving import native_event
from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import Engine, GenerationRequest, SamplingParams, build_engine
from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import add_save_result, finish, markdown_table


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute), O(len(a)·len(b)) time, O(len(b)) memory."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def one_run(engine: Engine, prompt_ids: list[int], params: SamplingParams,
            options: DiffusionOptions) -> dict[str, Any]:
    seq = engine.start(GenerationRequest(prompt_ids, params, options))
    released, views, step_ms, draft_ms, draft_bytes, event_bytes, plain_bytes = "", [], [], [], [], [], []
    while not seq.finished:
        t0 = time.perf_counter()
        engine.step_sequences([seq])
        step_ms.append((time.perf_counter() - t0) * 1000.0)
        t0 = time.perf_counter()
        seq.draft_text()  # the same call the step made once more, timed alone
        draft_ms.append((time.perf_counter() - t0) * 1000.0)
        for chunk in seq.drain():
            released += chunk.new_text
            views.append((chunk.nfe, released + (chunk.draft or "")))
            with_draft = json.dumps(native_event(chunk, released, "tiny-mdlm"))
            without = json.dumps(native_event(replace(chunk, draft=None), released, "tiny-mdlm"))
            draft_bytes.append(len(json.dumps(chunk.draft or "")))
            event_bytes.append(len(with_draft))
            plain_bytes.append(len(without))
    if seq.error is not None:
        raise seq.error
    final = released
    scale = max(len(final), 1)
    return {"final_text": final, "nfe": seq.nfe,
            "distance_by_pass": [(nfe, edit_distance(view, final) / scale) for nfe, view in views],
            "step_ms": step_ms, "draft_ms": draft_ms, "draft_bytes": draft_bytes, "event_bytes": event_bytes,
            "event_bytes_without_draft": plain_bytes}


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_pass: dict[int, list[float]] = {}
    for run in runs:
        for nfe, distance in run["distance_by_pass"]:
            by_pass.setdefault(nfe, []).append(distance)
    flat = lambda key: [v for run in runs for v in run[key]]  # noqa: E731
    return {
        "mean_distance_by_pass": {nfe: statistics.fmean(v) for nfe, v in sorted(by_pass.items())},
        "mean_passes": statistics.fmean(run["nfe"] for run in runs),
        "mean_step_ms": statistics.fmean(flat("step_ms")),
        "mean_draft_ms": statistics.fmean(flat("draft_ms")),
        "mean_draft_bytes_per_chunk": statistics.fmean(flat("draft_bytes")),
        "mean_event_bytes": statistics.fmean(flat("event_bytes")),
        "mean_event_bytes_without_draft": statistics.fmean(flat("event_bytes_without_draft")),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--modes", default="ultra,standard", help="comma list of ultra / standard")
    parser.add_argument("--ignore-eos", action="store_true", help="full-length answers (no early EOS)")
    add_save_result(parser, "draft")
    args = parser.parse_args(argv)
    from dfast_serve.models.embedded import load_tiny_mdlm

    model = load_tiny_mdlm()
    engine = build_engine(model)
    prompts = get_prompts(args.num_prompts)
    params = SamplingParams(max_tokens=args.max_tokens, draft=True, ignore_eos=args.ignore_eos)
    result: dict[str, Any] = {}
    for mode in args.modes.split(","):
        options = DiffusionOptions(ultra_fast=mode == "ultra")
        runs = [one_run(engine, model.encode_chat([{"role": "user", "content": p}]), params, options) for p in prompts]
        result[mode] = {**summarize_runs(runs), "runs": runs}
    passes = sorted({nfe for mode in result.values() for nfe in mode["mean_distance_by_pass"]})
    shown = [n for n in passes if n <= 4 or n % 8 == 0 or n == passes[-1]]
    table = ("Draft edit distance to the final answer (per character of the answer; 0 = converged)\n\n"
             + markdown_table(["pass"] + list(result), [[n] + [result[m]["mean_distance_by_pass"].get(n) for m in result]
                                                        for n in shown]) + "\n"
             + markdown_table(["mode", "passes", "step ms", "draft ms/pass", "draft B/chunk", "event B",
                               "event B w/o draft"],
                              [[m, r["mean_passes"], r["mean_step_ms"], r["mean_draft_ms"], r["mean_draft_bytes_per_chunk"],
                                r["mean_event_bytes"], r["mean_event_bytes_without_draft"]] for m, r in result.items()]))
    return finish({"modes": result}, "draft", args, table=table, out=args.save_result)


if __name__ == "__main__":
    main()
