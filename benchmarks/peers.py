"""Start and stop peer servers (vLLM's CPU server, …) installed in their own virtual environments.

Peers never enter the test suite: they live in venvs outside the repository (see the README's
"Against vLLM" section for the install), and a benchmark that needs one is skipped when it is absent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from benchmarks.metrics import RequestRecord
from benchmarks.serving import BenchConfig, send_request


def venv_bin(venv: str | Path, name: str) -> Path | None:
    """``<venv>/bin/<name>`` when it exists, else None."""
    path = Path(venv) / "bin" / name
    return path if path.exists() else None


@contextmanager
def background_server(argv: list[str], env: dict[str, str], health_url: str, log_path: Path,
                      startup_timeout_s: float = 600.0) -> Iterator[subprocess.Popen]:
    """Run ``argv`` in its own process group until ``health_url`` answers 200; always stop the whole group."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                   start_new_session=True)
        try:
            wait_healthy(health_url, process, startup_timeout_s, log_path)
            yield process
        finally:
            stop_group(process)


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float, log_path: Path, poll_s: float = 2.0) -> None:
    """Until ``url`` answers 200; RuntimeError when ``process`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(url, timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"{process.args[0]} not healthy after {timeout_s:.0f} s; see {log_path}")


def stop_group(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``grace_s``."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers (engine-core children) of a finished leader
    except ProcessLookupError:
        pass
    process.wait()


def pause_group(process: subprocess.Popen, paused: bool) -> None:
    """SIGSTOP/SIGCONT a server's process group (a peer that polls while idle must not tax the other's turn)."""
    try:
        os.killpg(process.pid, signal.SIGSTOP if paused else signal.SIGCONT)
    except ProcessLookupError:
        pass


async def interleaved(configs: dict[str, BenchConfig], prompts: list[str],
                      pause: dict[str, subprocess.Popen] | None = None) -> dict[str, list[RequestRecord]]:
    """One request at a time, the servers taking turns per prompt (the order alternating), so that load
    on a shared machine hits them alike; one uncounted warm-up request each first. ``pause``: name ->
    process group to SIGSTOP while it is another server's turn."""
    pause = pause or {}
    records: dict[str, list[RequestRecord]] = {name: [] for name in configs}
    names = list(configs)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), trust_env=False) as client:
        for name, config in configs.items():
            _resume_only(pause, name)
            warm = await send_request(client, config, prompts[0])
            if warm.error:
                raise RuntimeError(f"{name} warm-up failed: {warm.error}")
        for i, prompt in enumerate(prompts):
            for name in names if i % 2 == 0 else names[::-1]:
                _resume_only(pause, name)
                records[name].append(await send_request(client, configs[name], prompt))
    _resume_only(pause, None)
    return records


def _resume_only(pause: dict[str, subprocess.Popen], name: str | None) -> None:
    """Keep only the paused-when-idle server whose turn it is running (None: resume all)."""
    for other, process in pause.items():
        pause_group(process, paused=name is not None and other != name)
