"""The decoding x cache x concurrency x batch-invariance grid that ``benchmarks.gpu`` runs on the
native LLaDA-8B- and Dream-7B-shaped models (random weights, real sizes, bf16).

A cell is (concurrent sequences, decoding, cache, batch invariance). All of a cell's requests start
at once and run through ``engine.step`` as the server's step loop drives them, ``max_batch_size`` the
cell's concurrency; batch invariance on is ``batch_invariance: strict`` (every pass in its bucket's
fixed padded shape, ``engine/fixed_shape.py``), off the default batching. Decodings:
``standard`` (one token per pass), ``threshold`` (Fast-dLLM's parallel decoding, 0.9), ``ultra``
(the ultra-fast streaming scheduler) and ``ultra+threshold``. Figures: TTFT (first streamed chunk)
and TTFT over the floor (one forward pass over prompt + first block), TPF (answer tokens per
forward pass of a request), tokens/s over the cell. EOS is ignored so each answer runs
``max_tokens`` (random weights would end them at random).

The grid is pruned to what fits one H200 in about 5 minutes for both models: every decoding and
cache at concurrency 1, the cache and invariance at 8, and the batched best case at 32
(``FULL_GRID``); ``QUICK_GRID`` keeps the four cells that carry the headline comparisons.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.harness.inprocess import forward_time
from benchmarks.engine.native_dllm import run_batch
from benchmarks.harness.prompts import get_prompts
from dfast_serve.config import DiffusionOptions, resolve_diffusion_options
from dfast_serve.models.adapters import DiffusionLM


@dataclass(frozen=True)
class Cell:
    concurrency: int
    decoding: str  # standard | threshold | ultra | ultra+threshold
    cache: str  # none | prefix | dual
    invariant: bool = False

    @property
    def label(self) -> str:
        return f"c{self.concurrency}-{self.decoding}-{self.cache}{'-invariant' if self.invariant else ''}"


FULL_GRID = [
    Cell(1, "standard", "none"), Cell(1, "threshold", "none"), Cell(1, "threshold", "prefix"),
    Cell(1, "threshold", "dual"), Cell(1, "ultra", "none"), Cell(1, "ultra+threshold", "dual"),
    Cell(8, "threshold", "none"), Cell(8, "threshold", "dual"), Cell(8, "threshold", "dual", invariant=True),
    Cell(32, "threshold", "dual"), Cell(32, "ultra+threshold", "dual"),
]
QUICK_GRID = [Cell(1, "threshold", "none"), Cell(1, "threshold", "dual"), Cell(8, "threshold", "dual"),
              Cell(8, "threshold", "dual", invariant=True)]
HEADER = ["model", "cell", "concurrency", "decoding", "cache", "batch invariant", "TTFT p50 (ms)", "TTFT/floor",
          "TPF", "tokens/s", "E2E mean (ms)", "forward passes"]


def options(cell: Cell, block_length: int) -> DiffusionOptions:
    request: dict[str, Any] = {"ultra_fast": cell.decoding.startswith("ultra"), "block_length": block_length,
                               "cache": cell.cache}
    if cell.decoding.endswith("threshold"):
        request.update(decoding="threshold", threshold=0.9)
    return resolve_diffusion_options(request=request, environ={})


def prompt_set(model: DiffusionLM, count: int, shortest: int = 16, longest: int = 200) -> list[list[int]]:
    """``count`` prompts of real text, lengths spread over [shortest, longest] tokens."""
    text = " ".join(get_prompts(50, None))
    ids = model.encode_prompt(text)
    while len(ids) < longest:
        ids = ids + ids
    lengths = [round(shortest + i * (longest - shortest) / max(count - 1, 1)) for i in range(count)]
    return [ids[:n] for n in lengths]


def run_cell(model: DiffusionLM, cell: Cell, max_tokens: int, block_length: int, single_prompts: int) -> dict[str, Any]:
    """One cell; concurrency 1 runs ``single_prompts`` requests one after another."""
    opts = options(cell, block_length)
    fixed = replace(model, eos_token_ids=frozenset())
    if cell.concurrency == 1:
        prompts = prompt_set(model, single_prompts)
        runs = [run_batch(fixed, [p], opts, max_tokens, max_batch_size=1) for p in prompts]
    else:
        prompts = prompt_set(model, cell.concurrency)
        runs = [run_batch(fixed, prompts, opts, max_tokens, max_batch_size=cell.concurrency,
                          batch_invariance="strict" if cell.invariant else "off")]
    floor = statistics.median(forward_time(model, p + [model.mask_token_id] * block_length, 3) for p in prompts[:3])
    ttft_ms = statistics.median(r["ttft_ms_p50"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    tokens = sum(r["tokens"] for r in runs)
    return {"ttft_ms_p50": ttft_ms, "floor_ms": floor * 1000, "ttft_over_floor": ttft_ms / (floor * 1000),
            "tpf": statistics.mean(r["tokens"] / len(r["answers"]) / r["mean_nfe"] for r in runs),
            "tokens_per_s": tokens / wall, "e2e_ms_mean": statistics.mean(r["e2e_ms_mean"] for r in runs),
            "forward_passes": sum(r["forward_passes"] for r in runs), "wall_s": wall, "requests": len(prompts)}


def run_grid(model: DiffusionLM, grid: list[Cell], max_tokens: int, block_length: int, single_prompts: int,
             max_concurrency: int | None = None) -> tuple[dict[str, dict[str, Any]], list[list[Any]]]:
    """Every cell on ``model`` (concurrency capped at ``max_concurrency``: the CPU smoke run); figures and rows."""
    results: dict[str, dict[str, Any]] = {}
    rows: list[list[Any]] = []
    run_cell(model, Cell(1, "threshold", "dual"), min(max_tokens, 2 * block_length), block_length, 1)  # warm-up
    for cell in grid:
        label = cell.label  # the grid's name for the cell, also when the smoke run caps its concurrency
        if max_concurrency is not None:
            cell = replace(cell, concurrency=min(cell.concurrency, max_concurrency))
        print(f"-- {model.name} {label}", flush=True)
        r = run_cell(model, cell, max_tokens, block_length, single_prompts)
        results[f"{model.name}-{label}"] = {**r, "cell": vars(cell)}
        rows.append([model.name, label, cell.concurrency, cell.decoding, cell.cache, cell.invariant,
                     r["ttft_ms_p50"], r["ttft_over_floor"], r["tpf"], r["tokens_per_s"], r["e2e_ms_mean"],
                     r["forward_passes"]])
    return results, rows
