"""The in-process side of the harness: an engine's generation timed as a client would see it (no Ray,
no HTTP), one forward pass timed (the TTFT floor), and the model a driver's arguments name.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from benchmarks.harness.metrics import ChunkEvent, RequestRecord
from dfast_serve.engine import Engine, GenerationRequest
from dfast_serve.models.adapters import CausalLM, DiffusionLM
from dfast_serve.models.registry import load_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_request(engine: Engine, request: GenerationRequest, stream: bool = True,
                on_chunk: Callable[[float, int], None] | None = None) -> RequestRecord:
    """One generation, timed like a client would see it; ``stream=False`` keeps only the end."""
    record = RequestRecord(start=time.perf_counter(), prompt_tokens=len(request.prompt_ids))
    final, text = None, ""
    for chunk in engine.generate(request):
        now = time.perf_counter()
        final, text = chunk, text + chunk.new_text
        if stream:
            record.chunks.append(ChunkEvent(now, chunk.new_text, chunk.nfe))
        if on_chunk is not None:
            on_chunk((now - record.start) * 1000.0, chunk.total_tokens)
    record.end = time.perf_counter()
    if final is None:
        record.error = "the engine yielded nothing"
        return record
    if not stream:
        record.chunks.append(ChunkEvent(record.end, text, final.nfe))
    record.output_tokens, record.final_nfe = final.total_tokens, final.nfe
    return record


def forward_time(model: DiffusionLM | CausalLM, ids: list[int], repeats: int) -> float:
    """Median seconds of one forward pass over ``ids`` (diffusion logits, or an AR prefill)."""
    tensor = torch.tensor([ids], dtype=torch.long, device=model.device)
    if isinstance(model, DiffusionLM):
        run = lambda: model.logits(tensor)  # noqa: E731
    else:
        run = lambda: model.network(input_ids=tensor, use_cache=True)  # noqa: E731
    times = []
    with torch.inference_mode():
        run()  # warm
        for _ in range(repeats):
            _sync(model.device)
            t0 = time.perf_counter()
            run()
            _sync(model.device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floor_ids(model: DiffusionLM | CausalLM, prompt_ids: list[int], window: int) -> list[int]:
    """Prompt + first window of masks (diffusion), or the prompt alone (AR prefill)."""
    if isinstance(model, DiffusionLM):
        return prompt_ids + [model.mask_token_id] * window
    return prompt_ids


def load_bench_model(args: argparse.Namespace, engine: str, name: str) -> DiffusionLM | CausalLM:
    """Set ``--threads`` and load the model ``--source/--path/--device`` name (shared by the in-process tools)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(name=name, engine=engine, source=args.source, path=args.path, device=args.device)
