"""What one diffusion pass's sampling costs (issue #24): ``propose`` over many positions, in-process.

    python -m benchmarks.engine.sampling_cost                 # ~1-2 min on one CPU thread
    python -m benchmarks.engine.sampling_cost --scale 0.05 --repeats 1   # a smoke run

Each case times ``masked.proposal.propose`` (sampling plus the confidence) on random logits
(``randn * spread``: flat rows, the costly case for top-p, whose nucleus then holds thousands of
tokens) and records the largest tensor it allocates (a torch dispatch mode sees every op's output;
views are not counted): sampling runs in row chunks of ``sampling.CHUNK_ELEMENTS`` logits, so this
stays bounded whatever the number of positions. The last table sets the sampling rate against
tiny-mdlm's forward pass: how many sampled logits cost as much as one canvas token
(``masked.family.FILTERED_LOGITS_PER_TOKEN`` and ``PLAIN_LOGITS_PER_TOKEN`` are chosen from it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from benchmarks.harness.allocations import TensorSizes
from benchmarks.harness.results import add_save_result, finish, markdown_table
from dfast_serve.engine import sampling
from dfast_serve.engine.masked.family import FILTERED_LOGITS_PER_TOKEN, PLAIN_LOGITS_PER_TOKEN
from dfast_serve.engine.masked.proposal import propose
from dfast_serve.wire import SamplingParams
from dfast_serve.wire.options import DiffusionOptions

LLADA_VOCAB = 126_464
# (label, positions, vocab, dtype, temperature, top_p, confidence)
CASES = [
    ("review: T 2, top-p 0.99", 1000, 8192, torch.float32, 2.0, 0.99, "probability"),
    ("one block: T 2, top-p 0.99", 32, 8192, torch.float32, 2.0, 0.99, "probability"),
    ("T 1, top-p 0.9, entropy", 1000, 8192, torch.float32, 1.0, 0.9, "entropy"),
    ("T 1, plain", 1000, 8192, torch.float32, 1.0, 1.0, "probability"),
    ("greedy", 1000, 8192, torch.float32, 0.0, 1.0, "probability"),
    ("LLaDA vocab bf16: T 2, top-p 0.99", 256, LLADA_VOCAB, torch.bfloat16, 2.0, 0.99, "probability"),
    ("LLaDA vocab bf16: T 1, plain", 256, LLADA_VOCAB, torch.bfloat16, 1.0, 1.0, "probability"),
]


def time_case(positions: int, vocab: int, dtype: torch.dtype, temperature: float, top_p: float, confidence: str,
              repeats: int, spread: float) -> dict[str, Any]:
    logits = (torch.randn(positions, vocab, generator=torch.Generator().manual_seed(0)) * spread).to(dtype)
    params = SamplingParams(temperature=temperature, top_p=top_p)
    options = DiffusionOptions(confidence=confidence)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        propose(logits, 0, positions, params, options, generator)
        times.append(time.perf_counter() - start)
    with TensorSizes() as allocated:
        propose(logits, 0, positions, params, options, generator)
    return {"positions": positions, "vocab": vocab, "dtype": str(dtype).removeprefix("torch."),
            "temperature": temperature, "top_p": top_p, "confidence": confidence,
            "seconds_p50": statistics.median(times), "input_mb": logits.numel() * logits.element_size() / 2**20,
            "largest_tensor_mb": allocated.largest_bytes() / 2**20}


def forward_rate(repeats: int, tokens: int) -> dict[str, Any]:
    """tiny-mdlm's forward seconds per canvas token over a ``tokens``-long canvas."""
    from dfast_serve.models.embedded import load_tiny_mdlm

    model = load_tiny_mdlm()
    ids = torch.randint(0, 1000, (1, tokens), generator=torch.Generator().manual_seed(0))
    model.logits(ids)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.logits(ids)
        times.append(time.perf_counter() - start)
    return {"canvas_tokens": tokens, "seconds_per_token": statistics.median(times) / tokens}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a replica with num_cpus < 2 has one)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every case's positions (at least 1)")
    ap.add_argument("--spread", type=float, default=1.0, help="logits = randn * spread")
    add_save_result(ap, "sampling_cost")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = {}
    for label, positions, vocab, dtype, temperature, top_p, confidence in CASES:
        cases[label] = time_case(max(1, int(positions * args.scale)), vocab, dtype, temperature, top_p, confidence,
                                 args.repeats, args.spread)
    forward = forward_rate(args.repeats, max(16, int(1024 * args.scale)))
    for case in cases.values():
        per_logit = case["seconds_p50"] / (case["positions"] * case["vocab"])
        case["logits_per_canvas_token"] = forward["seconds_per_token"] / per_logit
    header = ["case", "positions × vocab", "dtype", "propose p50 (s)", "ms / position", "input (MB)",
              "largest tensor (MB)", "logits ≈ 1 canvas token"]
    rows = [[label, f"{c['positions']} × {c['vocab']}", c["dtype"], round(c["seconds_p50"], 3),
             round(1000 * c["seconds_p50"] / c["positions"], 3), round(c["input_mb"], 1),
             round(c["largest_tensor_mb"], 1), round(c["logits_per_canvas_token"])] for label, c in cases.items()]
    table = (markdown_table(header, rows)
             + f"\ntiny-mdlm forward: {forward['seconds_per_token'] * 1e6:.0f} µs per canvas token "
               f"({forward['canvas_tokens']}-token canvas); the engine counts {FILTERED_LOGITS_PER_TOKEN} logits sampled "
               f"with top-k/top-p, {PLAIN_LOGITS_PER_TOKEN} otherwise, as one canvas token; chunks of "
               f"{sampling.CHUNK_ELEMENTS} logits\n")
    return finish({"cases": cases, "forward": forward, "filtered_logits_per_token": FILTERED_LOGITS_PER_TOKEN,
                   "plain_logits_per_token": PLAIN_LOGITS_PER_TOKEN,
                   "chunk_elements": sampling.CHUNK_ELEMENTS}, "sampling_cost", args, table=table,
                  out=args.save_result)


if __name__ == "__main__":
    main()
