"""dfast_serve's native LLaDA path against dlmserve (another dLLM server) on one LLaDA-layout checkpoint.

    python -m benchmarks.peers.vs_dlmserve --remote-code <Fast-dLLM>/llada/model --num-prompts 5   # 6-8 min
    python -m benchmarks.peers.vs_dlmserve --remote-code <Fast-dLLM>/llada/model --phases ""      # in-process part

The checkpoint is written at run time into a temporary directory: random weights in LLaDA's key layout
(``model.transformer.*``) with LLaDA's vocabulary size (126464) and mask id (126336, ``<|mdm_mask|>``), which
dlmserve requires, the tiny-mdlm tokenizer with that mask token added, and a small body (``--hidden 128
--layers 4`` by default; head rows of ids the tokenizer lacks are zero, so answers are real tokens).
dlmserve loads LLaDA only through the checkpoint's own modelling code (``trust_remote_code``), so the public
LLaDA code (``configuration_llada.py``, ``modeling_llada.py``, e.g. NVlabs/Fast-dLLM's ``llada/model``) is
copied into that temporary directory from ``--remote-code``; it is never part of this repository.
dfast_serve serves the same directory with ``source: llada`` (its own code, no remote code).

Both get the same chat prompts, 64 tokens, 64 denoising steps in one 64-token block (the standard schedule,
ultra-fast off), greedy, one request at a time, interleaved: for each prompt the servers take turns, the order
alternating, so load on the shared machine hits them alike. dlmserve runs in bf16 only (its CPU choices are
``bf16`` and ``int4``); dfast_serve in bf16 and float32 (its CPU default). Two phases, one dlmserve each:

* ``dlm-default``: dlmserve as it starts (torch's default threads: one per core) against every dfast_serve
  replica: the default one (``num_cpus: 1``, so one torch thread, dtype auto = float32), bf16 at 1 and 2
  threads, float32 at 2 threads, and the default replica with ultra-fast on (its TTFT is the point);
* ``dlm-1t``: dlmserve with ``OMP_NUM_THREADS=1`` against dfast_serve's 1-thread replicas.

Per forward pass = a request's total time / its forward passes (dfast_serve reports them in the stream;
dlmserve's come from its ``/metrics`` step counter). dlmserve's own per-step time (its ``/metrics``) is
kept in the JSON too. Skipped (exit 0) when dlmserve's venv (``--dlm-venv`` or ``DFAST_DLM_VENV``, default
``/work/peers/dlmserve``) or the remote code is absent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

from benchmarks.harness.peers import RAY_ENV, ROOT, free_port, local_server
from benchmarks.harness.metrics import RequestRecord, e2e_latency, total_nfe, ttft
from benchmarks.engine.native_dllm import write_llada_checkpoint
from benchmarks.harness.peers import background_server, interleaved, venv_bin
from benchmarks.harness.prompts import get_prompts
from benchmarks.harness.results import finish, markdown_table, run_dir, save_result
from benchmarks.harness.client import BenchConfig

DEFAULT_VENV = "/work/peers/dlmserve"
LLADA_VOCAB, LLADA_MASK_ID, MASK_TOKEN = 126464, 126336, "<|mdm_mask|>"  # what dlmserve checks (models/llada.py)
REMOTE_FILES = ("configuration_llada.py", "modeling_llada.py")
AUTO_MAP = {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"}
DLM = "dlmserve"
STEP_METRIC = "dlmserve_denoising_step_duration_seconds"


@dataclass(frozen=True)
class Variant:
    """One dfast_serve replica of the checkpoint (a model entry of the served config)."""

    model: str
    dtype: str  # as configured ("auto" resolves to float32 on CPU)
    threads: int | None  # torch_threads; None: the replica default, floor(num_cpus) = 1
    ultra_fast: bool = False

    @property
    def label(self) -> str:
        return f"dfast_serve {'ultra-fast' if self.ultra_fast else 'standard'} {self.dtype_name} {self.thread_count}t"

    @property
    def dtype_name(self) -> str:
        return "float32" if self.dtype == "auto" else self.dtype

    @property
    def thread_count(self) -> int:
        return self.threads or 1


VARIANTS = {
    "default": Variant("llada", "auto", None),
    "bf16-1t": Variant("llada-bf16", "bfloat16", None),
    "bf16-2t": Variant("llada-bf16-2t", "bfloat16", 2),
    "fp32-2t": Variant("llada-2t", "float32", 2),
    "ultra": Variant("llada", "auto", None, ultra_fast=True),
}
PHASES = {  # phase -> (dlmserve OMP_NUM_THREADS or None for its default, dfast_serve variants in the turns)
    "dlm-default": (None, ["default", "bf16-1t", "bf16-2t", "fp32-2t", "ultra"]),
    "dlm-1t": (1, ["default", "bf16-1t"]),
}
COMPARISONS = [  # (label, phase, dfast_serve variant): per-pass ratio over that phase's dlmserve
    ("each server's defaults (dlmserve bf16, its threads; dfast_serve float32, 1 thread)", "dlm-default", "default"),
    ("bf16, 2 threads each", "dlm-default", "bf16-2t"),
    ("2 threads each, dfast_serve float32", "dlm-default", "fp32-2t"),
    ("bf16, 1 thread each", "dlm-1t", "bf16-1t"),
    ("1 thread each, dfast_serve float32", "dlm-1t", "default"),
]


# ---- the checkpoint ------------------------------------------------------------------------------
def write_checkpoint(directory: Path, remote_code: Path, hidden: int, layers: int, heads: int, mlp: int) -> Path:
    """A random LLaDA-layout checkpoint both servers load (see the module doc)."""
    write_llada_checkpoint(directory, hidden, layers, heads, mlp, vocab_size=LLADA_VOCAB, mask_token_id=LLADA_MASK_ID)
    add_mask_token(directory)
    config = json.loads((directory / "config.json").read_text())
    # fields LLaDA's own config.json has and its remote code reads (the native loader ignores them)
    config.update(auto_map=AUTO_MAP, use_cache=False, pad_token_id=config["eos_token_id"], mlp_ratio=4,
                  init_fn="mitchell", precision="amp_bf16")
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name in REMOTE_FILES:
        shutil.copy(remote_code / name, directory / name)
    return directory


def add_mask_token(directory: Path) -> None:
    """Give the tokenizer LLaDA's mask token at LLaDA's id, with a config transformers 4 and 5 both read
    (dlmserve pins transformers < 5; the chat template moves into tokenizer_config.json)."""
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"][MASK_TOKEN] = LLADA_MASK_ID
    tokenizer["added_tokens"].append({"id": LLADA_MASK_ID, "content": MASK_TOKEN, "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": True})
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    old = json.loads((directory / "tokenizer_config.json").read_text())
    template = directory / "chat_template.jinja"
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": old["eos_token"], "pad_token": old["pad_token"],
              "mask_token": MASK_TOKEN, "chat_template": template.read_text()}
    template.unlink()
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


# ---- the servers ----------------------------------------------------------------------------------
def variant_models(checkpoint: Path) -> list[dict[str, Any]]:
    """One model entry per dfast_serve variant, all serving the checkpoint (in place of the shipped models)."""
    models = []
    for variant in {v.model: v for v in VARIANTS.values()}.values():
        replica: dict[str, Any] = {"num_cpus": 1}
        if variant.threads is not None:
            replica.update(num_cpus=0.5, torch_threads=variant.threads)
        models.append({"name": variant.model, "engine": "diffusion", "source": "llada", "path": str(checkpoint),
                       "device": "cpu", "dtype": variant.dtype, "replica": replica})
    return models


def dlm_argv(venv: Path, port: int) -> list[str]:
    """dlmserve's app under its venv's uvicorn on loopback (its ``dlmserve`` command binds 0.0.0.0)."""
    return [str(venv_bin(venv, "python")), "-m", "uvicorn", "dlmserve.api.server:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]


def dlm_env(checkpoint: Path, threads: int | None, pythonpath: str | None) -> dict[str, str]:
    env = {"DLMSERVE_MODEL": str(checkpoint), "DLMSERVE_DTYPE": "bf16", "DLMSERVE_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": pythonpath or ""}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def dlm_default_threads(venv: Path) -> int:
    """torch's intra-op threads in dlmserve's venv when nothing sets them (what ``dlm-default`` runs with)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([str(venv_bin(venv, "python")), "-c", "import torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, env=env, timeout=120, check=True)
    return int(out.stdout.strip())


def step_counter(metrics_text: str) -> tuple[float, float]:
    """(steps, seconds) of dlmserve's step-duration histogram in a ``/metrics`` exposition."""
    def value(suffix: str) -> float:
        match = re.search(rf"^{STEP_METRIC}_{suffix}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", metrics_text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0
    return value("count"), value("sum")


def read_steps(url: str) -> tuple[float, float]:
    return step_counter(httpx.get(url + "/metrics", timeout=30, trust_env=False).text)


# ---- what one pass is made of (in-process, after the servers stopped) ----------------------------
# Run by dlmserve's interpreter: its model (the checkpoint's remote code, bf16) and its commit step, timed apart
# over one request's canvas (prompt + all-mask answer), as its engine loop calls them.
DLM_PASS = """
import json, sys, time, torch
from dlmserve.engine import Engine
from dlmserve.sampler import SamplingParams, commit_top_k_by_confidence
path, threads, reps, prompt, steps, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
engine = Engine(model_id=path, dtype="bf16", device="cpu")
ids, _ = engine._encode([prompt])
canvas = torch.cat([ids, torch.full((1, length), engine._loaded.mask_id)], dim=1)
mask = canvas == engine._loaded.mask_id
times = {"forward": [], "commit": [], "step": []}
with torch.no_grad():
    for _ in range(reps):
        t0 = time.perf_counter(); logits = engine._loaded.model(canvas, attention_mask=torch.ones_like(canvas)).logits
        t1 = time.perf_counter(); commit_top_k_by_confidence(canvas, logits, mask, torch.tensor([1]), canvas.shape[1])
        t2 = time.perf_counter()
        times["forward"].append(t1 - t0); times["commit"].append(t2 - t1)
    from dlmserve.denoise_loop import init_state
    params = SamplingParams(num_denoising_steps=steps, gen_length=length)
    for _ in range(reps):
        state = init_state(ids, params, mask_id=engine._loaded.mask_id)
        t0 = time.perf_counter(); engine._step_batch([type("R", (), {"state": state})()]); times["step"].append(time.perf_counter() - t0)
print(json.dumps({"canvas": canvas.shape[1], **{k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}}))
"""


def attribute(venv: Path, checkpoint: Path, threads: int, prompt: str, steps: int, max_tokens: int,
              reps: int = 9, rounds: int = 2) -> dict[str, Any]:
    """Median ms of one pass's parts, each server's code on the same canvas at ``threads`` torch threads:
    dlmserve's model forward, its commit and its whole engine step; dfast_serve's native forward (only the
    answer's logits, as its engine asks) and its logits at every position, and its engine's time per pass over
    one whole request (in-process, no server), in bf16 and float32. The two take turns ``rounds`` times; each part keeps its lowest median (the least disturbed)."""
    import torch

    from benchmarks.engine.native_dllm import run_batch
    from dfast_serve.config import DiffusionOptions
    from dfast_serve.models.registry import load_model

    standard = DiffusionOptions(ultra_fast=False, steps=steps, block_length=max_tokens)
    models = {dtype: load_model(name="llada", engine="diffusion", source="llada", path=str(checkpoint),
                                            device="cpu", dtype=dtype) for dtype in ("bfloat16", "float32")}
    ids = models["float32"].encode_chat([{"role": "user", "content": prompt}])
    canvas = torch.tensor([ids + [models["float32"].mask_token_id] * max_tokens])
    result: dict[str, Any] = {"threads": threads}

    def keep_lowest(name: str, parts: dict[str, float]) -> None:
        old = result.setdefault(name, {})
        result[name] = {k: min(v, old.get(k, v)) if isinstance(v, float) else v for k, v in parts.items()}

    previous = torch.get_num_threads()
    try:
        for _ in range(rounds):
            run = subprocess.run([str(venv_bin(venv, "python")), "-c", DLM_PASS, str(checkpoint), str(threads), str(reps),
                                  prompt, str(steps), str(max_tokens)], capture_output=True, text=True, timeout=600,
                                 env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"})
            if run.returncode != 0:
                raise RuntimeError(f"dlmserve attribution failed: {run.stderr[-2000:]}")
            keep_lowest("dlmserve", json.loads(run.stdout.strip().splitlines()[-1]))
            torch.set_num_threads(threads)
            for dtype, model in models.items():
                timed: dict[str, Any] = {"canvas": canvas.shape[1]}
                for name, keep in (("forward_answer_logits", max_tokens), ("forward_all_logits", None)):
                    samples = []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        model.logits(canvas, keep=keep)
                        samples.append(time.perf_counter() - t0)
                    timed[name] = sorted(samples)[reps // 2] * 1000
                run_ = run_batch(model, [ids], standard, max_tokens, max_batch_size=1)  # the engine, no server
                timed["engine_step"] = run_["wall_s"] * 1000 / run_["forward_passes"]
                keep_lowest(f"dfast_serve {dtype}", timed)
            torch.set_num_threads(previous)
        torch.set_num_threads(threads)
        result["dfast_serve bfloat16 top ops"] = top_ops(lambda: run_batch(models["bfloat16"], [ids], standard, max_tokens, 1),
                                                          steps)
        result["sampler ops"] = sampler_ops(max_tokens, LLADA_VOCAB, reps)
    finally:
        torch.set_num_threads(previous)
    return result


def top_ops(run: Any, passes: int, count: int = 8) -> list[dict[str, Any]]:
    """The ``count`` torch ops with the most self CPU time over ``run()``, in ms per pass."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    return [{"op": e.key, "ms_per_pass": e.self_cpu_time_total / 1000 / passes, "calls": e.count} for e in ops]


def sampler_ops(rows: int, vocab: int, reps: int) -> dict[str, float]:
    """Median ms of the reductions a greedy sampler may use over (rows, vocab) logits, bf16 and float32."""
    import torch

    bf16 = torch.randn(rows, vocab).to(torch.bfloat16)
    fp32 = bf16.float()
    ops = {"argmax bf16": lambda: bf16.argmax(-1), "max(-1) bf16 (values and indices)": lambda: bf16.max(-1),
           "argmax float32": lambda: fp32.argmax(-1), "max(-1) float32": lambda: fp32.max(-1),
           "bf16 -> float32": lambda: bf16.float(), "softmax float32": lambda: fp32.softmax(-1),
           "logsumexp float32": lambda: torch.logsumexp(fp32, -1)}
    out = {}
    for name, op in ops.items():
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            op()
            samples.append(time.perf_counter() - t0)
        out[name] = sorted(samples)[reps // 2] * 1000
    return out


# ---- requests and figures -------------------------------------------------------------------------
def standard_body(steps: int, max_tokens: int) -> dict[str, Any]:
    """dfast_serve's request options for the per-pass comparison: one block, ``steps`` passes, no ultra-fast."""
    return {"dfast": {"ultra_fast": False, "steps": steps, "block_length": max_tokens}}


def dlm_config(url: str, checkpoint: Path, steps: int, max_tokens: int) -> BenchConfig:
    return BenchConfig(model=str(checkpoint), base_url=url, endpoint="/v1/chat/completions", max_tokens=max_tokens,
                       temperature=0.0, stream_usage=False, extra_body={"num_denoising_steps": steps})


def dfast_bench_config(url: str, variant: Variant, steps: int, max_tokens: int) -> BenchConfig:
    extra = {"dfast": {"ultra_fast": True}} if variant.ultra_fast else standard_body(steps, max_tokens)
    return BenchConfig(model=variant.model, base_url=url, endpoint="/v1/chat/completions", max_tokens=max_tokens,
                       temperature=0.0, extra_body=extra)


def figures(records: list[RequestRecord], passes: float | None = None) -> dict[str, Any]:
    """Per-request figures (ms) and their medians; ``passes``: forward passes per request when the stream
    does not say (dlmserve)."""
    ok = [r for r in records if r.ok]
    per_request = []
    for r in ok:
        n = total_nfe(r) if passes is None else passes
        total = e2e_latency(r)
        first = ttft(r)
        per_request.append({"total_ms": total * 1000.0 if total is not None else None,
                            "ttft_ms": first * 1000.0 if first is not None else None, "passes": n,
                            "ms_per_pass": total * 1000.0 / n if total is not None and n else None,
                            "output_tokens": r.output_tokens, "text": r.text})

    def med(key: str) -> float | None:
        values = [p[key] for p in per_request if p[key] is not None]
        return statistics.median(values) if values else None

    def low(key: str) -> float | None:
        values = [p[key] for p in per_request if p[key] is not None]
        return min(values) if values else None

    return {"requests": len(records), "ok": len(ok), "errors": sorted({r.error for r in records if r.error}),
            "passes": med("passes"), "ms_per_pass_p50": med("ms_per_pass"), "ms_per_pass_min": low("ms_per_pass"),
            "ttft_ms_p50": med("ttft_ms"), "total_ms_p50": med("total_ms"), "per_request": per_request}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


HEADER = ["phase", "server", "dtype", "torch threads", "ok", "passes / request", "ms / pass p50", "ms / pass min",
          "TTFT p50 (ms)", "total p50 (ms)", "server's own ms / step"]


def table_row(phase: str, server: str, dtype: str, threads: int, f: dict[str, Any], step_ms: float | None = None) -> list[Any]:
    return [phase, server, dtype, threads, f"{f['ok']}/{f['requests']}", f["passes"], f["ms_per_pass_p50"],
            f["ms_per_pass_min"], f["ttft_ms_p50"], f["total_ms_p50"], step_ms]


PARTS_HEADER = ["torch threads", "canvas tokens", "dlmserve forward (bf16, remote code)", "dlmserve commit",
                "dlmserve engine step", "dfast_serve forward bf16 (all logits)", "dfast_serve engine step bf16",
                "dfast_serve forward float32 (all logits)", "dfast_serve engine step float32"]


def part_row(p: dict[str, Any]) -> list[Any]:
    d, b, f = p["dlmserve"], p["dfast_serve bfloat16"], p["dfast_serve float32"]
    return [p["threads"], d["canvas"], d["forward"], d["commit"], d["step"],
            f"{b['forward_answer_logits']:.1f} ({b['forward_all_logits']:.1f})", b["engine_step"],
            f"{f['forward_answer_logits']:.1f} ({f['forward_all_logits']:.1f})", f["engine_step"]]


# ---- the run --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dlm-venv", default=os.environ.get("DFAST_DLM_VENV", DEFAULT_VENV),
                    help="venv holding dlmserve 0.1.1 (and einops, which LLaDA's code imports); env DFAST_DLM_VENV")
    ap.add_argument("--remote-code", help="folder with LLaDA's public configuration_llada.py and modeling_llada.py")
    ap.add_argument("--remote-pythonpath", help="extra PYTHONPATH for dlmserve (e.g. a folder holding einops)")
    ap.add_argument("--config", default=str(ROOT / "serve_config.yaml"), help="dfast_serve config (server settings)")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    ap.add_argument("--num-prompts", type=int, default=4, help="counted requests per server per phase")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=352)
    ap.add_argument("--pause-idle", action=argparse.BooleanOptionalAction, default=True,
                    help="SIGSTOP dlmserve while dfast_serve has its turn (its engine loop polls every 1 ms when idle)")
    ap.add_argument("--attribute", action=argparse.BooleanOptionalAction, default=True,
                    help="after the servers stop, time one pass's parts in-process (each server's code, same canvas)")
    ap.add_argument("--out", help="folder for vs_dlmserve.json and the servers' logs (default: this run's results folder)")
    return ap.parse_args(argv)


def skip_reason(args: argparse.Namespace) -> str | None:
    venv = Path(args.dlm_venv)
    if venv_bin(venv, "python") is None or not list(venv.glob("lib/python3*/site-packages/dlmserve")):
        return f"no dlmserve in {venv} (pip install dlmserve==0.1.1 einops there, or set --dlm-venv / DFAST_DLM_VENV)"
    if not args.remote_code or not all((Path(args.remote_code) / f).exists() for f in REMOTE_FILES):
        return f"--remote-code must name a folder with LLaDA's public {' and '.join(REMOTE_FILES)}"
    return None


@contextmanager
def dlm_server(venv: Path, checkpoint: Path, threads: int | None, pythonpath: str | None,
               log: Path) -> Iterator[tuple[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with background_server(dlm_argv(venv, port), dlm_env(checkpoint, threads, pythonpath), url + "/ready", log,
                           startup_timeout_s=300) as process:
        yield url, process


def run_phase(phase: str, args: argparse.Namespace, venv: Path, checkpoint: Path, dfast_url: str,
              prompts: list[str], out: Path) -> dict[str, Any]:
    threads, names = PHASES[phase]
    with dlm_server(venv, checkpoint, threads, args.remote_pythonpath, out / f"dlmserve-{phase}.log") as (url, process):
        configs = {DLM: dlm_config(url, checkpoint, args.steps, args.max_tokens)}
        configs.update({name: dfast_bench_config(dfast_url, VARIANTS[name], args.steps, args.max_tokens) for name in names})
        steps_before = read_steps(url)
        records = asyncio.run(interleaved(configs, prompts, {DLM: process} if args.pause_idle else None))
        steps_after = read_steps(url)
    steps = steps_after[0] - steps_before[0]
    requests = len(prompts) + 1  # with the warm-up
    dlm_passes = steps / requests
    result = {"dlm_threads": threads, DLM: figures(records[DLM], dlm_passes),
              "dlm_server_step_ms": 1000.0 * (steps_after[1] - steps_before[1]) / steps if steps else None}
    result.update({name: figures(records[name]) for name in names})
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if reason := skip_reason(args):
        print(f"skipped: {reason}")
        return None
    phases = [p for p in args.phases.split(",") if p]  # none: only the in-process part (--phases "")
    if unknown := set(phases) - set(PHASES):
        raise SystemExit(f"unknown phases {sorted(unknown)}; choose from {list(PHASES)}")
    venv, out = Path(args.dlm_venv), Path(args.out or run_dir()).resolve()
    default_threads = dlm_default_threads(venv)
    prompts = get_prompts(args.num_prompts)
    started = time.time()
    results: dict[str, Any] = {}
    rows: list[list[Any]] = []
    from dfast_serve.serve.launch import RAY_PROCESS_ENV

    with tempfile.TemporaryDirectory(prefix="vs_dlmserve-") as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "llada", Path(args.remote_code), args.hidden, args.layers, args.heads,
                                      args.mlp)
        print(f"checkpoint {checkpoint}: hidden {args.hidden}, {args.layers} layers, vocab {LLADA_VOCAB}", flush=True)
        with (local_server(Path(args.config), out / "dfast", models=variant_models(checkpoint),
                           ray_env={**RAY_ENV, **RAY_PROCESS_ENV}) if phases else nullcontext("")) as dfast_url:
            for phase in phases:
                threads = PHASES[phase][0]
                print(f"-- phase {phase}: dlmserve threads {threads or f'default ({default_threads})'}", flush=True)
                try:
                    results[phase] = run_phase(phase, args, venv, checkpoint, dfast_url, prompts, out)
                except RuntimeError as exc:  # a server did not come up or a warm-up failed: keep the other phase
                    print(f"phase {phase} failed: {exc}", flush=True)
                    results[phase] = {"error": str(exc)}
                    continue
                r = results[phase]
                phase_rows = [table_row(phase, "dlmserve standard", "bfloat16", threads or default_threads, r[DLM],
                                        r["dlm_server_step_ms"])]
                phase_rows += [table_row(phase, VARIANTS[n].label, VARIANTS[n].dtype_name, VARIANTS[n].thread_count, r[n])
                               for n in PHASES[phase][1]]
                rows += phase_rows
                print(markdown_table(HEADER, phase_rows), flush=True)
                save_result({"partial": True, "phases": results}, out / "vs_dlmserve.json")
        parts = []
        for threads in sorted({1, default_threads}) if args.attribute else []:
            print(f"-- one pass, part by part, in-process, {threads} thread(s)", flush=True)
            parts.append(attribute(venv, checkpoint, threads, prompts[0], args.steps, args.max_tokens))
    comparisons = []
    for label, phase, name in COMPARISONS:
        r = results.get(phase, {})
        if DLM in r and name in r:
            comparisons.append([label, ratio(r[name]["ms_per_pass_p50"], r[DLM]["ms_per_pass_p50"]),
                                ratio(r[name]["ms_per_pass_min"], r[DLM]["ms_per_pass_min"]),
                                ratio(r[name]["total_ms_p50"], r[DLM]["total_ms_p50"])])
    ratio_header = ["dfast_serve / dlmserve", "ms / pass p50", "ms / pass min", "total p50"]
    header = (f"checkpoint: random LLaDA layout, vocab {LLADA_VOCAB}, hidden {args.hidden}, {args.layers} layers, "
              f"{args.heads} heads, MLP {args.mlp}; {args.max_tokens} tokens, {args.steps} steps, chat, "
              f"{args.num_prompts} prompts per server and phase")
    table = header + "\n\n" + markdown_table(HEADER, rows) + "\n" + markdown_table(ratio_header, comparisons)
    if parts:
        table += "\n" + markdown_table(PARTS_HEADER, [part_row(p) for p in parts])
        for p in parts:
            table += (f"\n{p['threads']} thread(s): dfast_serve's bf16 engine step, top torch ops (ms per pass)\n\n"
                      + markdown_table(["op", "ms / pass", "calls"], [[o["op"], o["ms_per_pass"], o["calls"]]
                                                                      for o in p["dfast_serve bfloat16 top ops"]])
                      + f"\n{p['threads']} thread(s): greedy-sampler reductions over ({args.max_tokens}, {LLADA_VOCAB}) "
                      "logits (ms)\n\n" + markdown_table(["op", "ms"], [[k, v] for k, v in p["sampler ops"].items()]))
    result = {"header": header, "wall_s": time.time() - started, "dlm_default_threads": default_threads,
              "prompts": prompts, "phases": results, "pass_parts": parts,
              "comparisons": {c[0]: dict(zip(ratio_header[1:], c[1:])) for c in comparisons}}
    return finish(result, "vs_dlmserve", args, table=table, out=out)


if __name__ == "__main__":
    main()
