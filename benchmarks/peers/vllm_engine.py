"""``engine: vllm`` against bare ``vllm serve`` and our transformers engine (``engine: ar``), side by side in
one run, with vLLM's own client (``vllm bench serve``) — issue #25's targets.

Started on this machine, all at once: bare ``vllm serve`` of the embedded SmolLM2 (from the vLLM
environment, ``scripts/setup_vllm.sh``), and ``serve run`` of a config serving the same checkpoint twice,
``smollm2-vllm`` (engine: vllm) and ``smollm2-135m`` (engine: ar), plus the two-hop echo app
(``benchmarks.serving.echo_app``: proxy → ingress → replica generator → SSE, no model), whose TTFT is what
Ray Serve's hops cost by themselves. Both vLLMs run with the same settings (dtype, context, eager or not).
Then, per concurrency and round, ``vllm bench serve`` (random dataset, fixed input/output lengths,
``--ignore-eos``) against each target in turn, the order rotating; per-request TTFT and TPOT
(``--save-detailed``) are pooled over the rounds. The table and the JSON say whether each target is met:

* TTFT p50 of engine: vllm ≤ bare vLLM's + 1.5 × the echo app's two-hop TTFT p50;
* TPOT p50 of engine: vllm ≤ 1.1 × bare vLLM's;
* output throughput at the highest concurrency ≥ 0.9 × bare vLLM's.

    python -m benchmarks.peers.vllm_engine                       # ~15 min on 2 cores
    python -m benchmarks.peers.vllm_engine --concurrency 1,8 --rounds 3 --num-prompts 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness.peers import ROOT, background_server, free_port, local_server
from benchmarks.harness.results import finish, markdown_table, run_dir
from dfast_serve.config.vllm import VLLM_SETUP, VLLMOptions

ECHO_APP = {"name": "echo", "route_prefix": "/echo", "import_path": "benchmarks.serving.echo_app:app"}


def served_models(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same checkpoint on both of our AR engines (on a GPU, sharing it with bare vLLM)."""
    replica = {"num_cpus": 1, "max_ongoing_requests": args.max_seqs, "max_queued_requests": 256}
    vllm = {"max_model_len": args.max_model_len, "enforce_eager": args.eager,
            "cpu_kv_cache_space_gib": args.kv_cache_gib}
    gpu: dict[str, Any] = {}
    if args.device == "cuda":
        vllm["gpu_memory_utilization"] = args.gpu_memory_utilization
        gpu = {"num_gpus": 0.4}
    return [{"name": "smollm2-vllm", "engine": "vllm", "source": "embedded", "replica": {**replica, **gpu},
             "vllm": vllm},
            {"name": "smollm2-135m", "engine": "ar", "source": "embedded",
             "replica": {**replica, **({"num_gpus": 0.2} if gpu else {}), "max_batch_size": args.max_seqs}}]


def device_env(args: argparse.Namespace) -> dict[str, str]:
    return {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)} if args.device == "cpu" else {}


def bench(vllm_bin: Path, base_url: str, model: str, tokenizer: str, concurrency: int, args: argparse.Namespace,
          out: Path) -> dict[str, Any]:
    """One ``vllm bench serve`` run; its saved JSON (with per-request ``ttfts`` and ``itls``)."""
    command = [str(vllm_bin), "bench", "serve", "--backend", "openai", "--base-url", base_url,
               "--endpoint", "/v1/completions", "--model", model, "--tokenizer", tokenizer,
               "--dataset-name", "random", "--random-input-len", str(args.input_len),
               "--random-output-len", str(args.output_len), "--random-range-ratio", "0",
               "--num-prompts", str(args.num_prompts * concurrency if concurrency > 1 else args.num_prompts),
               "--max-concurrency", str(concurrency), "--ignore-eos", "--num-warmups", "1", "--disable-tqdm",
               "--save-result", "--save-detailed", "--result-dir", str(out.parent), "--result-filename", out.name]
    env = {**os.environ, **device_env(args), "NO_PROXY": "127.0.0.1,localhost"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    out.with_suffix(".log").write_text(" ".join(command) + "\n" + run.stdout + run.stderr)
    if run.returncode != 0 or not out.exists():
        raise RuntimeError(f"vllm bench serve failed against {model} ({run.returncode}); see {out.with_suffix('.log')}")
    return json.loads(out.read_text())


async def echo_ttfts(url: str, n: int) -> list[float]:
    """TTFT in ms of ``n`` sequential two-hop echo requests (after one warm-up)."""
    ttfts = []
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        for i in range(n + 1):
            start = time.perf_counter()
            first = None
            async with client.stream("POST", url + "/echo/two-hop", json={"prompt": "x"}) as response:
                async for line in response.aiter_lines():
                    if first is None and line.startswith("data: "):
                        first = (time.perf_counter() - start) * 1000
            if i and first is not None:
                ttfts.append(first)
    return ttfts


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def tpots(data: dict[str, Any]) -> list[float]:
    """Per-request time per output token after the first (ms), as vLLM defines it."""
    return [sum(itl) / len(itl) * 1000 for itl in data.get("itls", []) if itl]


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vllm-python", default=VLLMOptions().interpreter(), help="the vLLM environment's python")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=12, help="per round, × concurrency when above 1")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--max-seqs", type=int, default=8, help="max_num_seqs / max_ongoing_requests of each")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: both vLLMs and our AR replica share the one GPU (benchmarks.gpu runs it so)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.35, help="each vLLM's share of the GPU")
    parser.add_argument("--dtype", default=None, help="bare vLLM's (default: float32 on a CPU, bfloat16 on a GPU, "
                        "what our dtype: auto picks)")
    parser.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                        help="enforce_eager for both vLLMs (no compilation: start-up in seconds)")
    parser.add_argument("--echo-requests", type=int, default=40)
    parser.add_argument("--result-dir")
    args = parser.parse_args(argv)
    venv_bin = Path(args.vllm_python).parent
    if not (venv_bin / "vllm").exists():
        print(f"not run: no vLLM environment at {venv_bin.parent} (run {VLLM_SETUP})")
        return None
    from dfast_serve.models.cache import smollm2_dir

    checkpoint = str(smollm2_dir())
    out = Path(args.result_dir or run_dir()).resolve() / "vllm_engine"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    bare_argv = [str(venv_bin / "vllm"), "serve", checkpoint, "--served-model-name", "smollm2-bare", "--host",
                 "127.0.0.1", "--port", str(port), "--dtype", dtype, "--max-model-len", str(args.max_model_len),
                 "--max-num-seqs", str(args.max_seqs), "--seed", "0"] + (["--enforce-eager"] if args.eager else [])
    if args.device == "cuda":
        bare_argv += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    bare_env = device_env(args)
    targets = {"bare vLLM": ("smollm2-bare", None), "engine: vllm": ("smollm2-vllm", None),
               "engine: ar": ("smollm2-135m", None)}
    samples: dict[str, dict[int, dict[str, list[float]]]] = {
        t: {c: {"ttft": [], "tpot": [], "throughput": []} for c in map(int, args.concurrency.split(","))}
        for t in targets}
    with background_server(bare_argv, bare_env, f"http://127.0.0.1:{port}/health", out / "bare_vllm.log") as _, \
            local_server(ROOT / "serve_config.yaml", out / "server", models=served_models(args),
                         extra_apps=[ECHO_APP], startup_timeout_s=900) as ours:
        urls = {"bare vLLM": f"http://127.0.0.1:{port}", "engine: vllm": ours, "engine: ar": ours}
        echo = asyncio.run(echo_ttfts(ours, args.echo_requests))
        names = list(targets)
        for concurrency in samples[names[0]]:
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:  # the order rotates
                    model = targets[name][0]
                    data = bench(venv_bin / "vllm", urls[name], model, checkpoint, concurrency, args,
                                 out / f"{model}-c{concurrency}-r{r}.json")
                    assert data["failed"] == 0, f"{name}: {data['failed']} failed requests"
                    s = samples[name][concurrency]
                    s["ttft"] += [t * 1000 for t in data["ttfts"]]
                    s["tpot"] += tpots(data)
                    s["throughput"].append(data["output_throughput"])
    echo_p50 = p50(echo)
    results: dict[str, Any] = {"echo_two_hop_ttft_ms_p50": echo_p50, "targets": {}}
    rows = []
    for concurrency in samples[names[0]]:
        bare = samples["bare vLLM"][concurrency]
        for name in names:
            s = samples[name][concurrency]
            entry = {"ttft_ms_p50": p50(s["ttft"]), "tpot_ms_p50": p50(s["tpot"]),
                     "output_tok_s": statistics.mean(s["throughput"]), "requests": len(s["ttft"])}
            results["targets"].setdefault(name, {})[concurrency] = entry
            rows.append([concurrency, name, entry["requests"], round(entry["ttft_ms_p50"], 1),
                         round(entry["tpot_ms_p50"], 2), round(entry["output_tok_s"], 1)])
        ours_ = results["targets"]["engine: vllm"][concurrency]
        results.setdefault("checks", {})[concurrency] = {
            "ttft_limit_ms": p50(bare["ttft"]) + 1.5 * echo_p50,
            "ttft_met": ours_["ttft_ms_p50"] <= p50(bare["ttft"]) + 1.5 * echo_p50,
            "tpot_ratio": ours_["tpot_ms_p50"] / p50(bare["tpot"]),
            "tpot_met": ours_["tpot_ms_p50"] <= 1.1 * p50(bare["tpot"]),
            "throughput_ratio": ours_["output_tok_s"] / statistics.mean(bare["throughput"]),
        }
    top = max(results["checks"])
    results["checks"][top]["throughput_met"] = results["checks"][top]["throughput_ratio"] >= 0.9
    table = markdown_table(["concurrency", "target", "requests", "TTFT p50 ms", "TPOT p50 ms", "output tok/s"], rows)
    checks = "\n".join(f"concurrency {c}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in chk.items()})}"
                       for c, chk in results["checks"].items())
    table += f"\n\necho app two-hop TTFT p50: {echo_p50:.1f} ms\n{checks}"
    return finish(results, "vllm_engine", args, table=table, out=out.parent / "vllm_engine.json")


if __name__ == "__main__":
    main()
