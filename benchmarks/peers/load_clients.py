"""The load generators users run, unmodified, against every engine: GuideLLM 0.8 and AIPerf 0.13, each from
its own virtualenv, beside our own ``dfast:time_to_first_token_seconds`` for the same requests.

One ``serve run`` on a private loopback Ray cluster serves tiny-mdlm (diffusion), smollm2-135m (engine:
ar) and smollm2-vllm (engine: vllm, when the vLLM environment exists). For each model, each client
runs the same small load (``--streams`` concurrent streams, ``--requests`` requests, synthetic prompts
of ``--prompt-tokens``, answers of ``--output-tokens``); before and after each run the router's
``/metrics`` is read, so the mean server-side TTFT of exactly that run's requests (the histogram's
sum / count difference) stands beside the client's mean and median TTFT.

Neither client takes a tokenizer directory offline as such (AIPerf refuses a path that is not a hub id),
so the model's tokenizer files are presented as a cached hub repository ``dfast-serve/<model>`` in a
private ``HF_HOME`` with ``HF_HUB_OFFLINE=1``: nothing is downloaded.

    python -m benchmarks.peers.load_clients --guidellm-venv /work/peers/guidellm --aiperf-venv /work/peers/aiperf
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness.peers import ROOT, local_server
from benchmarks.harness.results import finish, markdown_table, run_dir
from dfast_serve.config.vllm import VLLMOptions
from dfast_serve.models.cache import smollm2_dir

TINY_MDLM_TOKENIZER = ROOT / "dfast_serve" / "assets" / "tiny-mdlm"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "config.json", "generation_config.json")


def models(with_vllm: bool) -> list[dict[str, Any]]:
    replica = {"num_cpus": 1, "max_ongoing_requests": 8}
    served = [{"name": "tiny-mdlm", "engine": "diffusion", "source": "embedded", "replica": replica},
              {"name": "smollm2-135m", "engine": "ar", "source": "embedded", "replica": replica}]
    if with_vllm:
        served.append({"name": "smollm2-vllm", "engine": "vllm", "source": "embedded", "replica": replica,
                       "vllm": {"enforce_eager": True, "max_model_len": 2048}})
    return served


def hub_cache(home: Path, repo: str, files_from: Path) -> str:
    """``files_from``'s tokenizer files as the cached hub repository ``repo`` under ``home``; returns ``repo``."""
    snapshot = "0" * 40
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(snapshot)
    target = base / "snapshots" / snapshot
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (files_from / name).exists() and not (target / name).exists():
            (target / name).symlink_to((files_from / name).resolve())
    return repo


def server_ttft(url: str, model: str) -> tuple[float, float]:
    """(sum, count) of the router's TTFT histogram for ``model``."""
    text = httpx.get(url + "/metrics", timeout=30, trust_env=False).text
    values = {}
    for part in ("sum", "count"):
        match = re.search(rf'^dfast:time_to_first_token_seconds_{part}{{[^}}]*model_name="{re.escape(model)}"[^}}]*}} (\S+)',
                          text, re.M)
        values[part] = float(match.group(1)) if match else 0.0
    return values["sum"], values["count"]


def find(data: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in a JSON tree."""
    if isinstance(data, dict):
        if key in data:
            return data[key]
        children = data.values()
    elif isinstance(data, list):
        children = data
    else:
        return None
    for child in children:
        found = find(child, key)
        if found is not None:
            return found
    return None


def run_guidellm(venv: Path, url: str, model: str, tokenizer: str, args: argparse.Namespace, out: Path,
                 env: dict[str, str]) -> dict[str, Any]:
    result = out / f"guidellm-{model}.json"
    command = [str(venv / "bin" / "guidellm"), "run", "--backend", f"kind=openai_http,target={url},model={model}",
               "--profile", f"kind=concurrent,streams={args.streams}",
               "--constraint", f"kind=max_requests,count={args.requests}",
               "--data", f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},output_tokens={args.output_tokens}",
               "--tokenizer", f"kind=hf_auto,model={tokenizer}", "--output", f"kind=json,path={result}",
               "--disable-console-interactive"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    (out / f"guidellm-{model}.log").write_text(" ".join(command) + "\n" + run.stdout + run.stderr)
    if run.returncode != 0 or not result.exists():
        return {"error": f"exit {run.returncode}: {(run.stderr or run.stdout)[-300:]}"}
    ttft = find(json.loads(result.read_text()), "time_to_first_token_ms") or {}
    ok = ttft.get("successful", ttft)
    totals = find(json.loads(result.read_text()), "request_totals") or {}
    return {"ttft_ms_mean": ok.get("mean"), "ttft_ms_median": ok.get("median"), "completed": totals.get("successful"),
            "errored": totals.get("errored"), "command": " ".join(command)}


def run_aiperf(venv: Path, url: str, model: str, tokenizer: str, args: argparse.Namespace, out: Path,
               env: dict[str, str]) -> dict[str, Any]:
    artifacts = out / f"aiperf-{model}"
    command = [str(venv / "bin" / "aiperf"), "profile", "--model", model, "--url", url, "--endpoint-type", "chat",
               "--streaming", "--tokenizer", tokenizer, "--concurrency", str(args.streams),
               "--request-count", str(args.requests), "--isl", str(args.prompt_tokens), "--osl",
               str(args.output_tokens), "--ui-type", "none", "--artifact-dir", str(artifacts)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    (out / f"aiperf-{model}.log").write_text(" ".join(command) + "\n" + run.stdout + run.stderr)
    export = artifacts / "profile_export_aiperf.json"
    if run.returncode != 0 or not export.exists():
        return {"error": f"exit {run.returncode}: {(run.stderr or run.stdout)[-300:]}"}
    return {**aiperf_summary(export), "command": " ".join(command)}


def aiperf_summary(export: Path) -> dict[str, Any]:
    """TTFT and request counts from AIPerf's ``profile_export_aiperf.json``."""
    data = json.loads(export.read_text())
    ttft = data.get("time_to_first_token") or {}
    errors = data.get("error_request_count") or {}
    return {"ttft_ms_mean": ttft.get("avg"), "ttft_ms_median": ttft.get("p50"),
            "completed": (data.get("request_count") or {}).get("avg"),
            "errored": errors.get("avg", 0) if isinstance(errors, dict) else errors}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guidellm-venv", default=os.environ.get("GUIDELLM_VENV", "/work/peers/guidellm"))
    parser.add_argument("--aiperf-venv", default=os.environ.get("AIPERF_VENV", "/work/peers/aiperf"))
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--result-dir")
    args = parser.parse_args(argv)
    clients = {name: Path(venv) for name, venv in (("GuideLLM", args.guidellm_venv), ("AIPerf", args.aiperf_venv))
               if (Path(venv) / "bin").exists()}
    if not clients:
        print("not run: neither GuideLLM nor AIPerf is installed (docs/performance.md says how)")
        return None
    out = Path(args.result_dir or run_dir()).resolve() / "load_clients"
    out.mkdir(parents=True, exist_ok=True)
    home = out / "hf_home"
    tokenizers = {"tiny-mdlm": hub_cache(home, "dfast-serve/tiny-mdlm", TINY_MDLM_TOKENIZER),
                  "smollm2-135m": hub_cache(home, "dfast-serve/smollm2-135m", smollm2_dir())}
    tokenizers["smollm2-vllm"] = tokenizers["smollm2-135m"]
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "NO_PROXY": "127.0.0.1,localhost"}
    with_vllm = Path(VLLMOptions().interpreter()).exists()
    results: dict[str, Any] = {}
    rows = []
    with local_server(ROOT / "serve_config.yaml", out / "server", models=models(with_vllm),
                      startup_timeout_s=900) as url:
        for model in [m["name"] for m in models(with_vllm)]:
            for client, venv in clients.items():
                before = server_ttft(url, model)
                runner = run_guidellm if client == "GuideLLM" else run_aiperf
                result = runner(venv, url, model, tokenizers[model], args, out, env)
                after = server_ttft(url, model)
                requests = after[1] - before[1]
                result["server_ttft_ms_mean"] = (after[0] - before[0]) / requests * 1000 if requests else None
                result["server_requests"] = requests
                results[f"{client}/{model}"] = result
                rows.append([client, model, result.get("completed"), result.get("errored"),
                             _ms(result.get("ttft_ms_mean")), _ms(result.get("ttft_ms_median")),
                             _ms(result["server_ttft_ms_mean"]), int(requests), result.get("error", "")[:80]])
    table = markdown_table(["client", "model", "completed", "errored", "client TTFT mean ms", "client TTFT p50 ms",
                            "server TTFT mean ms", "server requests", "error"], rows)
    return finish({"runs": results}, "load_clients", args, table=table, out=out.parent / "load_clients.json")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    main()
