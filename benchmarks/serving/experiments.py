"""Served TTFT, end to end: streaming vs not, ultra-fast vs standard, the in-process floor, what Ray + HTTP
add, concurrency and step-level batching, in one run, into one folder (~20 min on 2 cores).

    python -m benchmarks.serving.experiments                  # into this run's benchmarks/results/ folder
    python -m benchmarks.serving.experiments --base-url http://127.0.0.1:8000 --quick   # a running server

Without ``--base-url`` it starts a private Ray cluster on loopback and ``serve run <config>`` on
it (a copy of the config on a free 127.0.0.1 port), and stops both at the end. Experiments:

1. ``matrix``      streaming vs non-streaming x diffusion vs AR x 64/256 output tokens
2. ``schedules``   ultra-fast vs standard diffusion streaming, side by side, as ratios
3. ``floor``       in-process TTFT / forward-pass floor, ultra-fast diffusion and AR
4. ``overhead``    in-process vs through the server (Ray Serve + HTTP), TTFT p50/p99
5. ``concurrency`` 1, 4, 16 concurrent clients: TTFT p50/p99 and throughput
6. ``batching``    the same sweep for the diffusion model with step-level batching on (its config)
                    and off (a copy served beside it with ``max_batch_size: 1``), levels taking turns

Each request run is saved as ``runs/<name>.json``; ``experiments.json`` holds all figures and the
tables, and the PNGs show TTFT distributions and one request's reveal timeline. In-process runs use as
many torch threads as a replica gets (``--threads``, default the diffusion replica's num_cpus),
so that the overhead comparison measures Ray and HTTP, not a different thread count.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


from benchmarks.engine import ttft as engine_bench
from benchmarks.harness.client import BenchConfig, run_benchmark
from benchmarks.harness.peers import ROOT, config_models, local_server, served_models
from benchmarks.harness.plots import plot_ttft_distributions
from benchmarks.harness.results import finish, markdown_table, run_dir, save_result

EXPERIMENTS = ("matrix", "schedules", "floor", "overhead", "concurrency", "batching")
UNBATCHED_SUFFIX = "-batch1"


# ---- running and recording -------------------------------------------------------------------
class Run:
    """Collects every result of this invocation under one folder."""

    def __init__(self, out: Path, url: str, num_prompts: int) -> None:
        self.out, self.url, self.num_prompts = out, url, num_prompts
        self.results: dict[str, dict[str, Any]] = {}
        self.tables: list[str] = []

    def serving(self, name: str, model: str, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("num_prompts", self.num_prompts)
        config = BenchConfig(model=model, base_url=self.url, label=name, **kwargs)
        print(f"-- {name}", flush=True)
        result = asyncio.run(run_benchmark(config))
        if result["failed"]:
            errors = sorted({e for e in result["per_request"]["error"] if e})
            print(f"   {result['failed']} failed: {errors[:3]}", flush=True)
        return self._keep(name, result)

    def engine(self, name: str, argv: list[str]) -> dict[str, Any]:
        print(f"-- {name} (in-process)", flush=True)
        path = self.out / "runs" / f"{name}.json"
        self.results[name] = engine_bench.main(argv + ["--label", name, "--save-result", str(path)])
        return self.results[name]

    def _keep(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        self.results[name] = result
        save_result(result, self.out / "runs" / f"{name}.json")
        return result

    def table(self, title: str, header: list[str], rows: list[list[Any]], note: str = "") -> None:
        lines = [f"### {title}", ""]
        if note:
            lines += [note, ""]
        text = "\n".join(lines) + "\n" + markdown_table(header, rows)
        self.tables.append(text)
        print("\n" + text, flush=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def _ttft_row(r: dict[str, Any]) -> list[Any]:
    return [r.get("mean_ttft_ms"), r.get("median_ttft_ms"), r.get("p90_ttft_ms"), r.get("p99_ttft_ms")]


# ---- the experiments ---------------------------------------------------------------------------
def matrix(run: Run, diffusion: str, ar: str) -> None:
    rows = []
    for model in (diffusion, ar):
        for max_tokens in (64, 256):
            for stream in (True, False):
                name = f"matrix-{model}-{max_tokens}-{'stream' if stream else 'nonstream'}"
                r = run.serving(name, model, max_tokens=max_tokens, stream=stream, concurrency=1)
                rows.append([model, "stream" if stream else "non-stream", max_tokens, r["completed"], *_ttft_row(r),
                             r.get("mean_e2el_ms"), r.get("output_throughput"), r.get("mean_nfe_total")])
    run.table("Streaming vs non-streaming, diffusion vs AR",
              ["model", "mode", "max_tokens", "requests", "TTFT mean (ms)", "p50", "p90", "p99",
               "total time mean (ms)", "tokens/s", "forward passes / request"], rows,
              "One client at a time, /v1/completions through the server. Non-streaming TTFT is the whole "
              "response time. tokens/s is output tokens over the run's wall time.")
    plot_ttft_distributions([run.results[f"matrix-{m}-64-{s}"] for m in (diffusion, ar)
                             for s in ("stream", "nonstream")], run.out / "ttft_matrix_64.png")


def schedules(run: Run, diffusion: str) -> None:
    results = {}
    for mode in ("ultra", "standard"):
        results[mode] = run.serving(f"schedule-{mode}", diffusion, max_tokens=64, concurrency=1,
                                    extra_body={"dfast": {"ultra_fast": mode == "ultra"}})
    u, s = results["ultra"], results["standard"]
    rows = [[name, r.get("median_ttft_ms"), r.get("p99_ttft_ms"), r.get("median_nfe_ttft"), r.get("mean_e2el_ms"),
             r.get("mean_nfe_total")] for name, r in results.items()]
    rows.append(["standard / ultra", _ratio(s.get("median_ttft_ms"), u.get("median_ttft_ms")),
                 _ratio(s.get("p99_ttft_ms"), u.get("p99_ttft_ms")), None,
                 _ratio(s.get("mean_e2el_ms"), u.get("mean_e2el_ms")), None])
    run.table("Ultra-fast vs standard diffusion streaming",
              ["schedule", "TTFT p50 (ms)", "TTFT p99 (ms)", "forward passes to 1st token", "total time mean (ms)",
               "forward passes / request"], rows,
              f"{diffusion}, 64 tokens, one client, same prompts, back to back in one run.")
    plot_ttft_distributions([u, s], run.out / "ttft_ultra_vs_standard.png")


def floor_and_overhead(run: Run, diffusion: str, ar: str, threads: int, do_floor: bool, do_overhead: bool) -> None:
    """In-process runs (no Ray, no HTTP) with the same prompts as /v1/completions (no chat template)."""
    common = ["--max-tokens", "64", "--num-prompts", str(run.num_prompts), "--no-chat", "--threads", str(threads)]
    inproc = {
        "diffusion": run.engine("engine-diffusion-ultra", ["--engine", "diffusion", "--mode", "ultra", *common,
                                                           "--timeline", str(run.out / "reveal_timeline.png")]),
        "ar": run.engine("engine-ar-stream", ["--engine", "ar", "--mode", "ultra", *common]),
    }
    if do_floor:
        rows = [[kind, r.get("median_floor_ms"), r.get("median_ttft_ms"), r.get("median_ttft_over_floor"),
                 r.get("p99_ttft_over_floor")] for kind, r in inproc.items()]
        run.table("TTFT / forward-pass floor (in-process)",
                  ["engine", "floor p50 (ms)", "TTFT p50 (ms)", "TTFT/floor p50", "TTFT/floor p99"], rows,
                  "Floor: one forward pass over the prompt + first block of masks (diffusion) or the prompt "
                  f"prefill (AR), median of 5, per prompt, in the same run. {threads} torch thread(s).")
    if do_overhead:
        served = {"diffusion": run.results.get("schedule-ultra") or run.serving(
                      "schedule-ultra", diffusion, max_tokens=64, concurrency=1,
                      extra_body={"dfast": {"ultra_fast": True}}),
                  "ar": run.results.get(f"matrix-{ar}-64-stream") or run.serving(
                      f"matrix-{ar}-64-stream", ar, max_tokens=64, concurrency=1)}
        rows = []
        for kind in ("diffusion", "ar"):
            i, s = inproc[kind], served[kind]
            rows.append([kind, i.get("median_ttft_ms"), s.get("median_ttft_ms"),
                         _delta(s.get("median_ttft_ms"), i.get("median_ttft_ms")),
                         i.get("p99_ttft_ms"), s.get("p99_ttft_ms"), _delta(s.get("p99_ttft_ms"), i.get("p99_ttft_ms"))])
        run.table("What Ray Serve and HTTP add to TTFT",
                  ["engine", "in-process p50 (ms)", "server p50 (ms)", "added p50 (ms)", "in-process p99 (ms)",
                   "server p99 (ms)", "added p99 (ms)"], rows,
                  "Same prompts, 64 tokens, one client; the server's replica has the same torch thread count.")


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def concurrency(run: Run, diffusion: str, ar: str, levels: tuple[int, ...]) -> None:
    rows = []
    for model in (diffusion, ar):
        for c in levels:
            r = run.serving(f"concurrency-{model}-c{c}", model, max_tokens=64, concurrency=c,
                            num_prompts=max(run.num_prompts, 2 * c))
            rows.append([model, c, r["completed"], r["failed"], r.get("median_ttft_ms"), r.get("p99_ttft_ms"),
                         r.get("request_throughput"), r.get("output_throughput")])
    run.table("Concurrency sweep",
              ["model", "clients", "ok", "failed", "TTFT p50 (ms)", "TTFT p99 (ms)", "requests/s", "tokens/s"], rows,
              "64 tokens, streaming; max(num_prompts, 2 x clients) requests per level; one replica per model.")


def batching(run: Run, diffusion: str, levels: tuple[int, ...]) -> None:
    rows = []
    for c in levels:
        results = {}
        for name, model in (("on", diffusion), ("off", diffusion + UNBATCHED_SUFFIX)):
            results[name] = run.serving(f"batching-{name}-c{c}", model, max_tokens=64, concurrency=c,
                                        num_prompts=max(run.num_prompts, 2 * c))
        on, off = results["on"], results["off"]
        for name, r in results.items():
            rows.append([c, name, r["completed"], r["failed"], r.get("median_ttft_ms"), r.get("p99_ttft_ms"),
                         r.get("output_throughput"), r.get("mean_nfe_total")])
        rows.append([c, "on / off", None, None, _ratio(on.get("median_ttft_ms"), off.get("median_ttft_ms")),
                     _ratio(on.get("p99_ttft_ms"), off.get("p99_ttft_ms")),
                     _ratio(on.get("output_throughput"), off.get("output_throughput")), None])
    run.table("Step-level batching on vs off",
              ["clients", "batching", "ok", "failed", "TTFT p50 (ms)", "TTFT p99 (ms)", "tokens/s",
               "forward passes / request"], rows,
              f"{diffusion}, 64 tokens, streaming; 'off' is the same model served beside it with max_batch_size 1 "
              "(every in-flight request still advances each step, one forward pass each).")


# ---- entry point -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for the JSON and PNGs (default: this run's benchmarks/results/ folder)")
    ap.add_argument("--base-url", help="use this running server instead of starting one")
    ap.add_argument("--config", default=str(ROOT / "serve_config.yaml"), help="serve config to start")
    ap.add_argument("--diffusion-model", default="tiny-mdlm")
    ap.add_argument("--ar-model", default="smollm2-135m")
    ap.add_argument("--num-prompts", type=int, default=15, help="requests per measured run")
    ap.add_argument("--concurrency-levels", default="1,4,16")
    ap.add_argument("--threads", type=int, help="torch threads in-process (default: the replica's num_cpus)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
    ap.add_argument("--quick", action="store_true", help="3 prompts per run, concurrency 1,2 (a smoke run)")
    return ap.parse_args(argv)


def replica_cpus(config_path: Path, model: str) -> int:
    for m in config_models(config_path):
        if m["name"] == model:
            return max(1, int(m.get("replica", {}).get("num_cpus", 1)))
    return 1


def unbatched_copy(config_path: Path, model: str) -> dict[str, Any]:
    """The model's entry again, named with ``UNBATCHED_SUFFIX``, with step-level batching off."""
    entry = next(m for m in config_models(config_path) if m["name"] == model)
    return {**entry, "name": model + UNBATCHED_SUFFIX, "replica": {**entry.get("replica", {}), "max_batch_size": 1}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    chosen = tuple(args.only.split(",")) if args.only else EXPERIMENTS
    unknown = set(chosen) - set(EXPERIMENTS)
    if unknown:
        raise SystemExit(f"unknown experiments {sorted(unknown)}; choose from {EXPERIMENTS}")
    levels = (1, 2) if args.quick else tuple(int(c) for c in args.concurrency_levels.split(","))
    num_prompts = 3 if args.quick else args.num_prompts
    threads = args.threads or replica_cpus(Path(args.config), args.diffusion_model)
    out = Path(args.out or run_dir()).resolve()
    started = time.time()
    unbatched = args.diffusion_model if "batching" in chosen else None
    extra = [unbatched_copy(Path(args.config), unbatched)] if unbatched else None
    with (local_server(Path(args.config), out / "server", extra_models=extra) if args.base_url is None
          else _existing(args.base_url)) as url:
        models = served_models(url)
        needed = [args.diffusion_model, args.ar_model] + ([args.diffusion_model + UNBATCHED_SUFFIX] if unbatched else [])
        for name in needed:
            if name not in models:
                raise SystemExit(f"model {name!r} is not served at {url} (served: {sorted(models)})")
        run = Run(out, url, num_prompts)
        if "matrix" in chosen:
            matrix(run, args.diffusion_model, args.ar_model)
        if "schedules" in chosen:
            schedules(run, args.diffusion_model)
        if "floor" in chosen or "overhead" in chosen:
            floor_and_overhead(run, args.diffusion_model, args.ar_model, threads,
                               "floor" in chosen, "overhead" in chosen)
        if "concurrency" in chosen:
            concurrency(run, args.diffusion_model, args.ar_model, levels)
        if "batching" in chosen:
            batching(run, args.diffusion_model, levels)
    raw = ("per_request", "generated_texts", "timeline", "table")
    figures = {name: {k: v for k, v in r.items() if k not in raw} for name, r in run.results.items()}
    finish({"figures": figures, "wall_s": time.time() - started}, "experiments", args, table="\n".join(run.tables),
           out=out)
    return run.results


@contextmanager
def _existing(url: str) -> Iterator[str]:
    yield url.rstrip("/")


if __name__ == "__main__":
    main()
