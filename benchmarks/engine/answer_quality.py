"""Does asking for a longer limit change the answer? Ultra-fast vs standard at several ``max_tokens``.

    python -m benchmarks.engine.answer_quality

For each prompt (greedy, embedded tiny-mdlm, chat), each ``max_tokens`` and each mode (the server's
ultra-fast default, and the standard one-token-per-pass schedule), prints the answer, its forward
passes (NFE) and, where the engine reports it, the passes spent on the block where the answer ends.
In-process, no timing: this table is about what the scheduler decides, not how fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import finish, markdown_table
from dfast_serve.config import resolve_diffusion_options
from dfast_serve.engine import GenerationRequest, SamplingParams, build_engine
from dfast_serve.models.embedded import load_tiny_mdlm

HEADER = ["prompt", "max tokens", "mode", "NFE", "passes on the ending block", "answer"]
MODES = {"ultra-fast (default)": {}, "standard": {"ultra_fast": False}}


def answer(engine: Any, ids: list[int], max_tokens: int, options: Any) -> dict[str, Any]:
    seq = engine.start(GenerationRequest(ids, SamplingParams(max_tokens=max_tokens), options))
    text = ""
    while not seq.finished:
        engine.step([seq])
        text += "".join(c.new_text for c in seq.drain())
    per_block = getattr(seq, "passes_per_block", None)
    tokens = seq.answer[: seq.streamed].tolist() if hasattr(seq, "streamed") else []
    eos = next((i for i, t in enumerate(tokens) if t in seq.eos_ids), None)
    block = options.block_length
    ending = per_block[eos // block] if per_block and eos is not None and eos // block < len(per_block) else None
    return {"text": text, "nfe": seq.nfe, "passes_on_ending_block": ending, "finish_reason": seq.finish_reason}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--num-prompts", type=int, default=3)
    ap.add_argument("--chars", type=int, default=70, help="answer characters shown in the table")
    ap.add_argument("--save-result", help="the result JSON (default: answer_quality.json in this run's benchmarks/results/ folder)")
    args = ap.parse_args(argv)
    model = load_tiny_mdlm()
    engine = build_engine(model, max_batch_size=1)
    rows, runs = [], []
    for prompt in get_prompts(args.num_prompts):
        ids = model.encode_chat([{"role": "user", "content": prompt}])
        for max_tokens in args.max_tokens:
            for mode, overrides in MODES.items():
                options = resolve_diffusion_options(request=overrides, environ={})
                out = answer(engine, ids, max_tokens, options)
                runs.append({"prompt": prompt, "max_tokens": max_tokens, "mode": mode, **out})
                rows.append([prompt, max_tokens, mode, out["nfe"], out["passes_on_ending_block"],
                             repr(out["text"][: args.chars])])
    return finish({"header": HEADER, "rows": rows, "runs": runs}, "answer_quality", args,
                  table=markdown_table(HEADER, rows), out=args.save_result)


if __name__ == "__main__":
    main()
