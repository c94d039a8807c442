"""DiffusionGemma: time to first text and to first draft, ours against transformers' ``generate`` + streamer.

On the tiny random DiffusionGemma (``tests/gemma.py``; the canvas length and denoising steps
are arguments), for each seed:

* **ours, in-process**: the engine stepped alone (``build_engine`` → the block-diffusion family), ``draft=True``: time and
  decoder passes to the first chunk with committed text, and to the first chunk with a draft;
  standard mode and ultra-fast (random weights never get under the entropy bound, so ultra-fast's
  policies do not fire here: its row shows their bookkeeping cost, not their gain);
* **transformers**: ``model.generate(streamer=...)`` with a streamer that records its first ``put``
  after the prompt (a finished canvas) and its first ``put_draft`` (a step's argmax canvas);
* **ours, through the server** (``--serve``: ``serve run`` of an app serving the checkpoint, on a private
  loopback Ray cluster; or ``--url`` of a running app serving it as ``--model``): the native stream
  (``/v1/dfast/stream``, ``draft: true``) timed at the client, from the request.

Passes count decoder (denoising) passes; the encoder's pass over the prompt comes before the first.
Tokens per forward pass = answer tokens / decoder passes (transformers' ``tokens_per_forward``).

    python -m benchmarks.engine.diffusion_gemma --serve         # ~2 min on 2 cores, with the served row
    python -m benchmarks.engine.diffusion_gemma --checkpoint DIR --url http://127.0.0.1:8000 --model tiny-gemma
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from benchmarks.harness.results import add_save_result, finish, markdown_table
from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import Engine, GenerationRequest, SamplingParams, build_engine
from dfast_serve.models.diffusion_gemma import DiffusionGemmaLM, load_diffusion_gemma
from tests.gemma import write_tiny_checkpoint

PROMPT = "t10 t11 t12 t13 t14 t15 t16 t17"


def ours(engine: Engine, prompt_ids: list[int], max_tokens: int, seed: int,
         options: DiffusionOptions) -> dict[str, Any]:
    params = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed, draft=True)
    started = time.perf_counter()
    seq = engine.start(GenerationRequest(prompt_ids, params, options))
    first_text = first_draft = None
    while not seq.finished:
        engine.step_sequences([seq])
        now = (time.perf_counter() - started) * 1000.0
        for chunk in seq.drain():
            if first_text is None and chunk.new_text:
                first_text = (now, chunk.nfe)
            if first_draft is None and chunk.draft:
                first_draft = (now, chunk.nfe)
    e2e = (time.perf_counter() - started) * 1000.0
    return {"first_text_ms": first_text[0], "first_text_passes": first_text[1],
            "first_draft_ms": first_draft[0] if first_draft else None,
            "first_draft_passes": first_draft[1] if first_draft else None, "e2e_ms": e2e,
            "passes": seq.nfe, "tokens": seq.detokenizer.token_count,
            "tokens_per_pass": seq.detokenizer.token_count / seq.nfe}


class FirstCalls:
    """A streamer that records when ``generate`` first hands it a finished canvas and a draft."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.prompt_seen = False
        self.drafts = 0
        self.first_put: tuple[float, int] | None = None
        self.first_draft: tuple[float, int] | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first put is the prompt
            self.prompt_seen = True
        elif self.first_put is None:
            self.first_put = ((time.perf_counter() - self.started) * 1000.0, self.drafts)

    def put_draft(self, value: torch.Tensor) -> None:
        self.drafts += 1
        if self.first_draft is None:
            self.first_draft = ((time.perf_counter() - self.started) * 1000.0, self.drafts)

    def end(self) -> None:
        pass


def reference(model: DiffusionGemmaLM, prompt_ids: list[int], max_tokens: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    streamer = FirstCalls()
    out = model.network.generate(torch.tensor([prompt_ids]), max_new_tokens=max_tokens, streamer=streamer)
    e2e = (time.perf_counter() - streamer.started) * 1000.0
    assert streamer.first_put is not None and streamer.first_draft is not None
    return {"first_text_ms": streamer.first_put[0], "first_text_passes": streamer.first_put[1],
            "first_draft_ms": streamer.first_draft[0], "first_draft_passes": streamer.first_draft[1],
            "e2e_ms": e2e, "passes": streamer.drafts, "tokens": out.sequences.shape[1] - len(prompt_ids),
            "tokens_per_pass": float(out.tokens_per_forward[0])}


def served(url: str, model: str, max_tokens: int, seed: int, ultra_fast: bool) -> dict[str, Any]:
    import requests

    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "seed": seed, "temperature": 1.0,
            "draft": True, "dfast": {"ultra_fast": ultra_fast}}
    started = time.perf_counter()
    first_text = first_draft = None
    last: dict[str, Any] = {}
    with requests.post(url + "/v1/dfast/stream", json=body, stream=True, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines(decode_unicode=True):
            if not line or line == "data: [DONE]":
                continue
            now = (time.perf_counter() - started) * 1000.0
            last = json.loads(line[len("data: "):])
            if first_text is None and last.get("new_text"):
                first_text = (now, last["nfe"])
            if first_draft is None and last.get("draft"):
                first_draft = (now, last["nfe"])
    e2e = (time.perf_counter() - started) * 1000.0
    return {"first_text_ms": first_text[0], "first_text_passes": first_text[1],
            "first_draft_ms": first_draft[0] if first_draft else None,
            "first_draft_passes": first_draft[1] if first_draft else None, "e2e_ms": e2e,
            "passes": last["nfe"], "tokens": last["total_tokens"], "tokens_per_pass": last["total_tokens"] / last["nfe"]}


def compare(model: DiffusionGemmaLM, prompt_ids: list[int], max_tokens: int,
            seeds: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Per-seed runs of transformers' generate and of our engine (standard, ultra-fast), interleaved so
    that machine load hits every variant alike; one warm-up of each first."""
    engine = build_engine(model)
    ours(engine, prompt_ids, model.canvas_length, 0, DiffusionOptions(ultra_fast=False))
    reference(model, prompt_ids, model.canvas_length, 0)
    rows: dict[str, list[dict[str, Any]]] = {"transformers generate + streamer": [], "ours, standard": [],
                                             "ours, ultra-fast": []}
    for seed in seeds:
        rows["transformers generate + streamer"].append(reference(model, prompt_ids, max_tokens, seed))
        rows["ours, standard"].append(ours(engine, prompt_ids, max_tokens, seed, DiffusionOptions(ultra_fast=False)))
        rows["ours, ultra-fast"].append(ours(engine, prompt_ids, max_tokens, seed, DiffusionOptions()))
    return rows


HEADER = ["variant", "first text ms", "first text passes", "first draft ms", "first draft passes", "e2e ms", "passes",
          "tokens", "tokens/pass"]


def table_row(name: str, s: dict[str, Any]) -> list[Any]:
    return [name, s.get("first_text_ms"), s.get("first_text_passes"), s.get("first_draft_ms"),
            s.get("first_draft_passes"), s.get("e2e_ms"), s.get("passes"), s.get("tokens"), s.get("tokens_per_pass")]


@contextmanager
def serving(path: str, model: str, workdir: Path) -> Iterator[str]:
    """``serve run`` of the shipped config's server serving only the checkpoint (standard mode, one torch
    thread), on loopback."""
    from benchmarks.harness.peers import ROOT, local_server

    entry = {"name": model, "engine": "diffusion", "source": "diffusion_gemma", "path": path,
             "replica": {"num_cpus": 1, "torch_threads": 1}, "diffusion": {"ultra_fast": False}}
    with local_server(ROOT / "serve_config.yaml", workdir, models=[entry]) as url:
        yield url


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["first_text_ms", "first_text_passes", "first_draft_ms", "first_draft_passes", "e2e_ms", "passes",
            "tokens", "tokens_per_pass"]
    return {k: statistics.median(r[k] for r in runs) for k in keys if all(r[k] is not None for r in runs)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a DiffusionGemma checkpoint directory (default: write the tiny random one)")
    ap.add_argument("--canvas-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16, help="denoising steps per canvas of the tiny checkpoint")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--url", help="also time a running server's native stream (serving --checkpoint as --model)")
    ap.add_argument("--serve", action="store_true", help="also time the native stream of a local serve run of the "
                    "checkpoint (a private Ray cluster on 127.0.0.1)")
    ap.add_argument("--model", default="tiny-gemma")
    add_save_result(ap, "diffusion_gemma")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        path = args.checkpoint or str(write_tiny_checkpoint(Path(scratch) / "tiny", args.canvas_length, args.steps))
        model = load_diffusion_gemma(path, "tiny-gemma")
        prompt_ids = model.encode_prompt(PROMPT)
        seeds = list(range(args.seeds))
        rows = compare(model, prompt_ids, args.max_tokens, seeds)
        if args.url:
            rows["ours through the server, standard"] = [served(args.url, args.model, args.max_tokens, s, False)
                                                         for s in seeds]
        if args.serve:
            with serving(path, args.model, Path(scratch) / "serve") as url:
                served(url, args.model, model.canvas_length, 0, False)  # warm-up
                rows["ours through the server, standard"] = [served(url, args.model, args.max_tokens, s, False)
                                                             for s in seeds]
    summary = {name: summarize(runs) for name, runs in rows.items()}
    table = [table_row(name, s) for name, s in summary.items()]
    title = (f"DiffusionGemma tiny random, canvas {model.canvas_length}, {model.sampling.max_denoising_steps} "
             f"steps/canvas, max_tokens {args.max_tokens}, medians of {args.seeds} seeds, {args.threads} thread(s)")
    return finish({"summary": summary, "runs": rows}, "diffusion_gemma", args,
                  table=title + "\n\n" + markdown_table(HEADER, table), out=args.save_result)


if __name__ == "__main__":
    main()
