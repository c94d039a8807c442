"""Where the AR engine's time goes on a CPU: dtype x torch threads, prefill, decode and engine overhead.

    python -m benchmarks.engine.ar_cpu --num-prompts 4      # ~10 min on 2 shared cores
    python -m benchmarks.engine.ar_cpu --dtypes float32 --threads 1,2 --num-prompts 3

In-process, the embedded SmolLM2-135M (or ``--path``), chat prompts. For every prompt the variants
take turns (dtype x thread count, ``torch.set_num_threads`` switched in place), so machine load hits
them alike. Per variant:

* ``prefill``: one forward pass over the prompt computing logits at every position (what
  transformers does by default), and ``prefill_last``: the same pass with ``logits_to_keep=1``
  (the LM head on the last position only: the only logits a server needs);
* ``decode``: mean of one-token forward passes with the KV cache;
* ``engine TTFT`` / ``engine TPOT``: ``EngineCore.generate`` (AR family) end to end (sampling, detokenization,
  chunk records, cache handling included); TPOT minus ``decode`` is the engine's per-token work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import add_save_result, finish, markdown_table
from dfast_serve.engine import GenerationRequest, SamplingParams, build_engine
from dfast_serve.models.adapters import load_causal_lm
from dfast_serve.models.embedded import prepare_smollm2


def forward_ms(model: Any, ids: torch.Tensor, **kwargs: Any) -> tuple[float, Any]:
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.network(input_ids=ids, use_cache=True, **kwargs)
        return (time.perf_counter() - t0) * 1000.0, out


def measure(model: Any, engine: Any, ids: list[int], decode_steps: int, max_tokens: int) -> dict[str, float]:
    tensor = torch.tensor([ids])
    prefill, _ = forward_ms(model, tensor)
    prefill_last, out = forward_ms(model, tensor, logits_to_keep=1)
    cache = getattr(out, "cache", None) or out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    steps = []
    for _ in range(decode_steps):
        ms, out = forward_ms(model, token, cache=cache, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        steps.append(ms)
    start = time.perf_counter()
    times, tokens = [], []
    for chunk in engine.generate(GenerationRequest(ids, SamplingParams(max_tokens=max_tokens))):
        times.append((time.perf_counter() - start) * 1000.0)
        tokens.append(chunk.total_tokens)
    tpot = (times[-1] - times[0]) / (tokens[-1] - tokens[0]) if tokens[-1] > tokens[0] else float("nan")
    return {"prefill": prefill, "prefill_last": prefill_last, "decode": statistics.mean(steps),
            "engine_ttft": times[0], "engine_tpot": tpot, "prompt_tokens": float(len(ids))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", help="HF causal LM directory (default: the embedded SmolLM2 bf16 directory)")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--num-prompts", type=int, default=5)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per engine run (TTFT and TPOT)")
    add_save_result(ap, "ar_cpu")
    args = ap.parse_args(argv)
    path = args.path or str(prepare_smollm2())
    models = {d: load_causal_lm(path, name=f"ar-{d}", dtype=d) for d in args.dtypes.split(",")}
    engines = {d: build_engine(m) for d, m in models.items()}
    threads = [int(t) for t in args.threads.split(",")]
    prompts = get_prompts(args.num_prompts)
    variants = [(d, t) for d in models for t in threads]
    for d, t in variants:  # warm every kernel path
        torch.set_num_threads(t)
        measure(models[d], engines[d], models[d].encode_chat([{"role": "user", "content": prompts[0]}]), 2, 3)
    raw: dict[str, list[dict[str, float]]] = {f"{d}/{t}t": [] for d, t in variants}
    for i, prompt in enumerate(prompts):
        order = variants if i % 2 == 0 else variants[::-1]
        for d, t in order:
            torch.set_num_threads(t)
            ids = models[d].encode_chat([{"role": "user", "content": prompt}])
            raw[f"{d}/{t}t"].append(measure(models[d], engines[d], ids, args.decode_steps, args.max_tokens))
        print(f"prompt {i + 1}/{len(prompts)} done", flush=True)
    keys = ("prefill", "prefill_last", "decode", "engine_ttft", "engine_tpot")
    summary = {name: {k: statistics.median(r[k] for r in rows) for k in keys + ("prompt_tokens",)}
               for name, rows in raw.items()}
    base = summary[next(iter(summary))]
    rows = [[name, s["prompt_tokens"], *[s[k] for k in keys], s["engine_tpot"] - s["decode"],
             base["engine_ttft"] / s["engine_ttft"], base["engine_tpot"] / s["engine_tpot"]]
            for name, s in summary.items()]
    table = markdown_table(["dtype/threads", "prompt tokens", "prefill all-logits (ms)", "prefill last-logit (ms)",
                            "decode step (ms)", "engine TTFT (ms)", "engine TPOT (ms)", "engine per-token work (ms)",
                            f"TTFT speed-up vs {next(iter(summary))}", "TPOT speed-up"], rows)
    config = {**vars(args), "path": path, "torch": torch.__version__}
    return finish({"summary": summary, "per_prompt": raw}, "ar_cpu", config, table=table, out=args.save_result)


if __name__ == "__main__":
    main()
