"""Saved benchmark results: one JSON object per run, stamped with what ran, when, where and on which commit.

Every driver ends with ``finish(result, kind, config, table=...)``: it stamps the result, saves it
as ``<kind>.json`` in the run's folder (default ``benchmarks/results/<date>-<machine>-<commit>``),
prints the table and returns the result. ``DFAST_BENCH_MACHINE`` names the machine (default
``cpu-<N>core``, or ``gpu-<name>`` when CUDA is in use).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


@functools.lru_cache(maxsize=1)
def commit() -> str:
    """The checkout's short commit, ``-dirty`` when tracked files outside the results differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short=7", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    except (OSError, subprocess.CalledProcessError):
        return "nogit"
    return head + ("-dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    torch = sys.modules.get("torch")  # only when the driver uses torch: importing it here costs seconds
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return None


def machine() -> str:
    """A short name for the folder: ``$DFAST_BENCH_MACHINE``, ``gpu-<name>``, or ``cpu-<N>core``."""
    if os.environ.get("DFAST_BENCH_MACHINE"):
        return os.environ["DFAST_BENCH_MACHINE"]
    gpu = _gpu_name()
    if gpu:
        return "gpu-" + re.sub(r"[^a-z0-9]+", "-", gpu.lower().replace("nvidia", "")).strip("-")
    return f"cpu-{os.cpu_count()}core"


def run_dir() -> Path:
    """This run's folder: ``benchmarks/results/<UTC date>-<machine>-<commit>``."""
    return RESULTS / f"{time.strftime('%Y-%m-%d', time.gmtime())}-{machine()}-{commit()}"


def command() -> str:
    """The command line of this process, as ``python -m <module> <args>`` when it was run that way."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return " ".join([program, *sys.argv[1:]])


def stamp(summary: dict[str, Any], kind: str, label: str | None,
          config: dict[str, Any] | argparse.Namespace) -> dict[str, Any]:
    """Add the run's identity (what, when, where, on which commit, how) to a summary, in place, and return it."""
    summary.update({
        "kind": kind,
        "label": label or kind,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit(),
        "machine": machine(),
        "cpu": cpu_model(),
        "gpu": _gpu_name(),
        "host": platform.node(),
        "command": command(),
        "config": vars(config) if isinstance(config, argparse.Namespace) else config,
    })
    return summary


def add_save_result(parser: argparse.ArgumentParser, kind: str) -> None:
    """The ``--save-result`` option every single-JSON driver takes."""
    parser.add_argument("--save-result", help=f"the result JSON (default: {kind}.json in this run's folder)")


def result_path(out: str | Path | None, kind: str) -> Path:
    """``out`` when it names a ``.json`` file, else ``<out or run_dir()>/<kind>.json``."""
    if out is not None and str(out).endswith(".json"):
        return Path(out)
    return Path(out or run_dir()) / f"{kind}.json"


def finish(result: dict[str, Any], kind: str, config: dict[str, Any] | argparse.Namespace, *,
           table: str = "", out: str | Path | None = None, label: str | None = None) -> dict[str, Any]:
    """The end of every driver: stamp ``result``, keep ``table`` in it, save it (see ``result_path``),
    print the table and where it went, and return the result."""
    if table:
        result.setdefault("table", table)
    stamp(result, kind, label, config)
    path = save_result(result, result_path(out, kind))
    if table:
        print(table, flush=True)
    print(f"saved {path}", flush=True)
    return result


def save_result(result: dict[str, Any], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return out


def load_result(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats get 2 decimals below 100 and none above."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
