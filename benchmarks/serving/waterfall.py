"""Where one request's time to first token goes, hop by hop, per engine, idle and at 4 clients.

    python -m benchmarks.serving.waterfall --variants ray-defaults,nice0+throughput --num-prompts 8   # ~4 min idle
    python -m benchmarks.serving.waterfall --variants nice0+throughput --engines diffusion --num-prompts 5

For each Ray *variant* (the process-wide settings ``dfast-serve`` sets: worker niceness and
``RAY_SERVE_THROUGHPUT_OPTIMIZED``) it starts a private Ray cluster on loopback with ``serve run`` of
the config plus a second application, ``benchmarks.serving.echo_app`` (proxy → ingress → replica, one yield,
no work). Then, per prompt, in turn, with the torch thread count a replica gets:

* served: client TTFT through ``/v1/chat/completions`` (HTTP → proxy → ingress → handle → replica →
  step loop → engine → back), and the echo app's one-hop and two-hop TTFT;
* in-process (no Ray, no HTTP): the whole serving path — ``OpenAIServing.create`` (parse, validate,
  plan) on a replica client that calls the replica class itself (``ModelReplica``, undeployed:
  tokenize, step loop, ``StreamingChunk``) up to the first SSE event with text — and, timed apart, the
  ingress's parse/validate/plan, tokenization (the chat template), one forward pass over the first
  step's canvas (diffusion: prompt + ``max_tokens`` masks; AR: the prefill) and the engine's TTFT
  (``engine.generate``).

The waterfall stacks them; served minus in-process serving is exactly what Ray + HTTP add, and the
*residue* is that minus the echo app's two hops (handle metadata and scheduling, the replica's and
ingress's event loops next to the step thread). Also reported: what Ray + HTTP add over the engine's
in-process TTFT against the echo app, in-process TTFT / forward pass, and the inter-chunk overhead
(served minus in-process time between the first and last chunk, per chunk). At 4 clients the served
and echo TTFTs are measured with 4 concurrent streams and the in-process serving path with 4
concurrent requests.
``waterfall.json`` (with the tables) and a stacked-bar PNG go to ``--out`` (default: this run's folder).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import torch
import yaml

from benchmarks.harness.client import BenchConfig, issue_requests
from benchmarks.harness.inprocess import forward_time, run_request
from benchmarks.harness.metrics import RequestRecord, describe, percentile, ttft
from benchmarks.harness.peers import RAY_ENV, ROOT, local_server
from benchmarks.harness.plots import plot_waterfall
from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import finish, markdown_table, run_dir
from dfast_serve.api.tracking import NullMetrics, NullTracker
from dfast_serve.api.body import parse_json, validate
from dfast_serve.api.protocol import ChatCompletionRequest
from dfast_serve.api.serving import EventStream, OpenAIServing
from dfast_serve.config import ServerConfig, load_server_config
from dfast_serve.engine import GenerationRequest
from dfast_serve.models.adapters import DiffusionLM
from dfast_serve.wire import StreamingChunk, APIError, ReplicaRequest
from dfast_serve.serve.replicas import ModelReplica

BASE_ENV = {k: v for k, v in RAY_ENV.items() if k != "RAY_worker_niceness"}
VARIANTS = {
    "ray-defaults": BASE_ENV,  # workers at nice 15, Serve's latency defaults
    "nice0": {**BASE_ENV, "RAY_worker_niceness": "0"},
    "nice0+throughput": {**BASE_ENV, "RAY_worker_niceness": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}
ECHO_APP = {"name": "echo", "route_prefix": "/echo", "import_path": "benchmarks.serving.echo_app:app"}
SEGMENTS = (  # bottom to top of each bar: (key, label)
    ("forward", "forward pass over the first canvas"),
    ("engine_extra", "engine work besides that pass"),
    ("tokenize", "tokenize (chat template)"),
    ("ingress", "ingress parse/validate/plan"),
    ("handoff", "step loop admission + thread→loop handoff + chunk → SSE"),
    ("echo_two_hop", "Ray Serve + HTTP, two hops (echo app)"),
    ("residue", "residue (served − the rest)"),
)


# ---- in-process pieces ---------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return (time.perf_counter() - t0) * 1000.0, value


def chat_body(model: str, prompt: str, max_tokens: int) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}).encode()


class _LocalCall:
    """A generation on the in-process replica, with the replica client's contract (errors raised)."""

    def __init__(self, replica: Any, request: ReplicaRequest) -> None:
        self._gen = replica.generate(request)

    def __aiter__(self) -> "_LocalCall":
        return self

    async def __anext__(self) -> StreamingChunk:
        item = await self._gen.__anext__()
        if isinstance(item, APIError):
            raise item
        return item

    def cancel(self) -> None:
        asyncio.ensure_future(self._gen.aclose())


class _LocalClient:
    def __init__(self, replica: Any) -> None:
        self.replica = replica

    def generate(self, request: ReplicaRequest) -> _LocalCall:
        return _LocalCall(self.replica, request)

    async def check_ready(self, timeout_s: float) -> str:
        return "ok"


async def serving_ttft(serving: OpenAIServing, raw: bytes) -> float:
    """ms from ``create`` to the first SSE event with text (the stream is read to its end)."""
    start = time.perf_counter()
    first = math.nan
    response = await serving.create("chat", raw, NullTracker())
    assert isinstance(response, EventStream)
    try:
        async for event in response.events:
            if math.isnan(first) and _has_text(event):
                first = (time.perf_counter() - start) * 1000.0
    finally:
        response.close()
    return first


def _has_text(event: bytes) -> bool:
    data = event[len(b"data: "):].strip()
    if not data or data == b"[DONE]":
        return False
    choices = json.loads(data).get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


def engine_run(engine: Any, request: GenerationRequest) -> tuple[float, list[float]]:
    """Engine TTFT (ms) and the times of every chunk with text (ms since start)."""
    record = run_request(engine, request)
    times = [(t - record.start) * 1000.0 for t, text, _ in record.chunks if text]
    return times[0] if times else math.nan, times


class InProcess:
    """One served model in this process: the replica class (undeployed) behind ``OpenAIServing``."""

    def __init__(self, config: ServerConfig, name: str) -> None:
        served = next(m for m in config.models if m.name == name)
        self.name = name
        diffusion = config.resolve_diffusion()
        self.replica = ModelReplica.func_or_class(served.model_dump(exclude={"replica", "diffusion"}),
                                                  diffusion.get(name), served.replica.model_dump())
        self.model, self.engine = self.replica.model, self.replica.engine
        self.diffusion = diffusion.get(name)
        self.serving = OpenAIServing(config.model_copy(update={"models": [served]}),
                                     {name: _LocalClient(self.replica)}, {k: v for k, v in diffusion.items() if k == name},
                                     NullMetrics())
        for _ in range(2):  # lazy initialisation on both threads (the step loop's torch thread pool included)
            asyncio.run(serving_ttft(self.serving, chat_body(name, "Hello", 4)))

    def measure(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        raw = chat_body(self.name, prompt, max_tokens)
        ingress_ms, (_, request) = timed(lambda: self.serving.plan(validate(ChatCompletionRequest, parse_json(raw)),
                                                                   "chatcmpl-x", time.monotonic()))
        tokenize_ms, ids = timed(lambda: self.model.encode_chat(request.messages))
        canvas = ids + [self.model.mask_token_id] * max_tokens if isinstance(self.model, DiffusionLM) else ids
        forward_ms = forward_time(self.model, canvas, repeats=3) * 1000.0
        generation = GenerationRequest(prompt_ids=ids, params=request.params, diffusion=request.diffusion)
        engine_ttft, chunk_times = engine_run(self.engine, generation)
        serving_ms = asyncio.run(serving_ttft(self.serving, raw))
        return {"ingress": ingress_ms, "tokenize": tokenize_ms, "forward": forward_ms, "engine_ttft": engine_ttft,
                "serving_ttft": serving_ms, "chunk_times": chunk_times, "chunks": len(chunk_times)}

    def concurrent(self, prompts: list[str], max_tokens: int) -> list[float]:
        async def all_at_once() -> list[float]:
            return list(await asyncio.gather(*(serving_ttft(self.serving, chat_body(self.name, p, max_tokens))
                                               for p in prompts)))

        return asyncio.run(all_at_once())


# ---- served --------------------------------------------------------------------------------------
async def served(url: str, model: str, prompts: list[str], max_tokens: int, concurrency: int,
                 endpoint: str = "/v1/chat/completions") -> list[RequestRecord]:
    config = BenchConfig(model=model, base_url=url, endpoint=endpoint, max_tokens=max_tokens, temperature=0.0,
                         concurrency=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), trust_env=False,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        return await issue_requests(client, config, prompts)


def client_ttfts(records: list[RequestRecord]) -> list[float]:
    return [t * 1000.0 if (t := ttft(r)) is not None else math.nan for r in records]


def chunk_span_ms(record: RequestRecord) -> tuple[float, int]:
    times = [t for t, text, _ in record.chunks if text]
    return ((times[-1] - times[0]) * 1000.0 if times else math.nan), len(times)


# ---- one variant ---------------------------------------------------------------------------------
def run_variant(variant: str, args: argparse.Namespace, engines: dict[str, InProcess], served_names: dict[str, str],
                out: Path) -> dict[str, Any]:
    prompts = get_prompts(args.num_prompts)
    tokens = {"diffusion": args.max_tokens, "ar": args.ar_max_tokens}
    raw: dict[str, dict[str, list[Any]]] = {kind: {} for kind in engines}
    c4: dict[str, dict[str, list[float]]] = {}
    echo: dict[str, list[float]] = {"echo_one_hop": [], "echo_two_hop": []}
    with local_server(Path(args.config), out / variant / "server", ray_env=VARIANTS[variant],
                      extra_apps=[ECHO_APP]) as url:
        nice = _worker_niceness(out / variant / "server")
        for _ in range(3):  # warm every path
            for kind, name in served_names.items():
                asyncio.run(served(url, name, prompts[:1], tokens[kind], 1))
            asyncio.run(served(url + "/echo", "echo", prompts[:1], 1, 1, endpoint="/two-hop"))
        for prompt in prompts:
            for hop in ("one-hop", "two-hop"):
                rec = asyncio.run(served(url + "/echo", "echo", [prompt], 1, 1, endpoint=f"/{hop}"))
                echo[f"echo_{hop.replace('-', '_')}"] += client_ttfts(rec)
            for kind, proc in engines.items():
                piece = proc.measure(prompt, tokens[kind])
                rec = asyncio.run(served(url, served_names[kind], [prompt], tokens[kind], 1))[0]
                span, chunks = chunk_span_ms(rec)
                piece.update(served=client_ttfts([rec])[0], served_span=span, served_chunks=chunks,
                             error=rec.error)
                for key, value in piece.items():
                    raw[kind].setdefault(key, []).append(value)
        for kind, proc in engines.items():  # 4 clients
            batch = (prompts * 4)[: max(8, args.num_prompts)]
            c4[kind] = {
                "served": client_ttfts(asyncio.run(served(url, served_names[kind], batch, tokens[kind], 4))),
                "echo_two_hop": client_ttfts(asyncio.run(served(url + "/echo", "echo", batch, 1, 4,
                                                                endpoint="/two-hop"))),
                "serving_ttft": [t for i in range(0, len(batch), 4) for t in proc.concurrent(batch[i:i + 4],
                                                                                             tokens[kind])],
            }
    return {"variant": variant, "ray_env": VARIANTS[variant], "worker_niceness_seen": nice,
            "engines": {kind: analyse(raw[kind], echo, c4[kind]) for kind in engines},
            "echo": {k: describe([v for v in vals if not math.isnan(v)]) for k, vals in echo.items()}}


def _worker_niceness(workdir: Path) -> list[int]:
    """Nice values of this cluster's Serve processes (checks that RAY_worker_niceness took effect)."""
    values = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if b"ServeReplica" in cmd or b"ServeController" in cmd or b"ProxyActor" in cmd:
            values.append(int(fields[16]))
    return sorted(set(values))


def p(values: list[float], q: float) -> float | None:
    """The q-th percentile of the values that are numbers (NaN: a request without text), None for none."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return percentile(clean, q) if clean else None


def analyse(raw: dict[str, list[Any]], echo: dict[str, list[float]], c4: dict[str, list[float]]) -> dict[str, Any]:
    """Per-request segments (paired by prompt), their p50/p99, and the issue's target ratios."""
    n = len(raw["served"])
    seg = {
        "forward": raw["forward"],
        "engine_extra": [raw["engine_ttft"][i] - raw["forward"][i] for i in range(n)],
        "tokenize": raw["tokenize"],
        "ingress": raw["ingress"],
        "handoff": [raw["serving_ttft"][i] - raw["engine_ttft"][i] - raw["tokenize"][i] - raw["ingress"][i]
                    for i in range(n)],
        "echo_two_hop": echo["echo_two_hop"][:n],
    }
    seg["residue"] = [raw["served"][i] - sum(seg[k][i] for k in seg) for i in range(n)]
    added = [raw["served"][i] - raw["engine_ttft"][i] for i in range(n)]
    ray_http = [raw["served"][i] - raw["serving_ttft"][i] for i in range(n)]
    per_chunk = [(raw["served_span"][i] - (raw["chunk_times"][i][-1] - raw["chunk_times"][i][0])) /
                 (raw["chunks"][i] - 1) for i in range(n)
                 if raw["chunks"][i] > 1 and raw["served_chunks"][i] == raw["chunks"][i]]
    summary = {f"{k}_{q}": p(v, q) for k, v in seg.items() for q in (50, 99)}
    for key in ("served", "engine_ttft", "serving_ttft"):
        summary.update({f"{key}_50": p(raw[key], 50), f"{key}_99": p(raw[key], 99)})
    echo2_p50 = p(echo["echo_two_hop"], 50)
    summary.update({
        "added_by_ray_http_50": p(added, 50), "added_by_ray_http_99": p(added, 99),
        "ray_http_over_inprocess_serving_50": p(ray_http, 50), "ray_http_over_inprocess_serving_99": p(ray_http, 99),
        "echo_two_hop_50": echo2_p50, "echo_one_hop_50": p(echo["echo_one_hop"], 50),
        "added_over_echo_two_hop": (p(added, 50) / echo2_p50) if echo2_p50 else None,
        "inprocess_ttft_over_forward": p([raw["engine_ttft"][i] / raw["forward"][i] for i in range(n)], 50),
        "inter_chunk_overhead_ms_50": p(per_chunk, 50), "inter_chunk_pairs": len(per_chunk),
        "c4_served_50": p(c4["served"], 50), "c4_served_99": p(c4["served"], 99),
        "c4_echo_two_hop_50": p(c4["echo_two_hop"], 50), "c4_echo_two_hop_99": p(c4["echo_two_hop"], 99),
        "c4_serving_50": p(c4["serving_ttft"], 50), "c4_serving_99": p(c4["serving_ttft"], 99),
        "errors": [e for e in raw["error"] if e],
    })
    return {"summary": summary, "per_request": {**{k: v for k, v in raw.items() if k != "chunk_times"}, **seg,
                                                "added_by_ray_http": added, "ray_http": ray_http}, "c4": c4}


# ---- output --------------------------------------------------------------------------------------
def tables(results: list[dict[str, Any]]) -> str:
    rows, target_rows, c4_rows = [], [], []
    for r in results:
        for kind, e in r["engines"].items():
            s = e["summary"]
            rows.append([r["variant"], kind, *[s[f"{k}_50"] for k, _ in SEGMENTS], s["served_50"], s["served_99"]])
            target_rows.append([r["variant"], kind, s["engine_ttft_50"], s["serving_ttft_50"], s["served_50"],
                                s["ray_http_over_inprocess_serving_50"], s["added_by_ray_http_50"],
                                s["added_by_ray_http_99"], s["echo_two_hop_50"], s["added_over_echo_two_hop"],
                                s["inprocess_ttft_over_forward"], s["inter_chunk_overhead_ms_50"]])
            c4_rows.append([r["variant"], kind, s["c4_echo_two_hop_50"], s["c4_echo_two_hop_99"], s["c4_serving_50"],
                            s["c4_serving_99"], s["c4_served_50"], s["c4_served_99"]])
    text = "### TTFT waterfall, one client (p50 per segment, ms)\n\n" + markdown_table(
        ["variant", "engine", *[label for _, label in SEGMENTS], "served TTFT p50", "served TTFT p99"], rows)
    text += "\n### Against the targets (one client)\n\n" + markdown_table(
        ["variant", "engine", "in-process engine TTFT p50", "in-process serving TTFT p50", "served TTFT p50",
         "served − in-process serving p50", "Ray+HTTP add over engine p50", "add p99",
         "echo two-hop p50", "add / echo (≤1.5)", "in-process TTFT / forward (≤1.15)", "inter-chunk overhead ms (≤2)"],
        target_rows)
    text += "\n### Four clients (ms)\n\n" + markdown_table(
        ["variant", "engine", "echo two-hop p50", "echo p99", "in-process serving p50", "in-process serving p99",
         "served p50", "served p99"], c4_rows)
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "serve_config.yaml"))
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--engines", default="diffusion,ar")
    ap.add_argument("--num-prompts", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64, help="diffusion answer length (its first canvas)")
    ap.add_argument("--ar-max-tokens", type=int, default=16, help="AR answer length (TTFT does not depend on it)")
    ap.add_argument("--threads", type=int, help="torch threads in-process (default: what the config's replica gets)")
    ap.add_argument("--out", help="folder for waterfall.json and waterfall.png (default: this run's results folder)")
    return ap.parse_args(argv)


def replica_threads(model: Any) -> int:
    """What a replica of ``model`` runs with: its ``torch_threads``, else Ray's floor(num_cpus), at least 1."""
    explicit = getattr(model.replica, "torch_threads", None)
    return explicit or max(1, math.floor(model.replica.num_cpus))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    app_args = yaml.safe_load(Path(args.config).read_text())["applications"][0]["args"]
    config = load_server_config(app_args)
    kinds = args.engines.split(",")
    chosen = {kind: next(m for m in config.models if m.engine == kind) for kind in kinds}
    threads = args.threads or max(replica_threads(m) for m in chosen.values())
    torch.set_num_threads(threads)
    engines = {kind: InProcess(config, m.name) for kind, m in chosen.items()}
    out = Path(args.out or run_dir()).resolve()
    started = time.time()
    results = [run_variant(v, args, engines, {k: m.name for k, m in chosen.items()}, out) for v in variants]
    plot_waterfall(results, SEGMENTS, out / "waterfall.png")
    return finish({"threads": threads, "wall_s": time.time() - started, "results": results}, "waterfall", args,
                  table=tables(results), out=out)

if __name__ == "__main__":
    main()
