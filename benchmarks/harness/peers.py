"""The servers under test, started and stopped: ours (``local_server``: ``serve run`` of a config copy on
a private Ray cluster on loopback) and peers (vLLM's CPU server, dlmserve, …) installed in their own
virtual environments; requests sent to several servers in turn (``interleaved``).

Peers never enter the test suite: they live in venvs outside the repository (docs/performance.md says
how to install them), and a benchmark that needs one is skipped when it is absent.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import yaml

from benchmarks.harness.metrics import RequestRecord
from benchmarks.harness.client import BenchConfig, send_request
from benchmarks.harness.results import ROOT

# Ray processes stay on loopback and run at normal priority (Ray's default nice 15 starves them).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0",
           "RAY_USAGE_STATS_ENABLED": "0"}


# ---- ours ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def private_ray_cluster(num_cpus: int, ray_env: dict[str, str] | None = None) -> Iterator[str]:
    """A Ray cluster of our own on loopback (free ports), so no other local Ray is touched.

    ``ray_env`` (default ``RAY_ENV``) is the environment every Ray process of the cluster starts with;
    ``RAY_*`` variables it leaves out are unset, so that settings of an earlier cluster do not leak."""
    env = RAY_ENV if ray_env is None else ray_env
    for key in [k for k in os.environ if k.startswith("RAY_") and k not in env]:
        del os.environ[key]
    os.environ.update(env)  # before Ray is imported: it reads them at import; the raylet and workers inherit them
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": num_cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def config_models(config_path: Path) -> list[dict[str, Any]]:
    """The model entries of a serve config's app (its first application)."""
    return yaml.safe_load(config_path.read_text())["applications"][0]["args"]["models"]


def config_copy(config_path: Path, workdir: Path, models: list[dict[str, Any]] | None = None,
                extra_models: list[dict[str, Any]] | None = None,
                extra_apps: list[dict[str, Any]] | None = None) -> tuple[Path, int]:
    """``workdir/serve_config.yaml``: ``config_path`` on a free 127.0.0.1 port, its models replaced by
    ``models`` (when given) plus ``extra_models``, ``extra_apps`` appended; returns (path, port)."""
    config = yaml.safe_load(config_path.read_text())
    app_args = config["applications"][0]["args"]
    app_args["models"] = (app_args["models"] if models is None else models) + (extra_models or [])
    config["applications"] += extra_apps or []
    port = free_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / "serve_config.yaml"
    copy.write_text(yaml.safe_dump(config))
    return copy, port


@contextmanager
def local_server(config_path: Path, workdir: Path, *, models: list[dict[str, Any]] | None = None,
                 extra_models: list[dict[str, Any]] | None = None, ray_env: dict[str, str] | None = None,
                 extra_apps: list[dict[str, Any]] | None = None, startup_timeout_s: float = 300) -> Iterator[str]:
    """``serve run`` of a copy of ``config_path`` (free loopback port) on a private cluster; yields its URL.

    ``models`` replaces the app's model entries, ``extra_models`` are added to them. ``ray_env``: see
    ``private_ray_cluster``. ``extra_apps`` are appended to the config's applications (the repository
    root is put on the cluster's ``PYTHONPATH``, so they may live in ``benchmarks``)."""
    copy, port = config_copy(config_path, workdir, models, extra_models, extra_apps)
    serve_bin = Path(sys.executable).with_name("serve")
    url = f"http://127.0.0.1:{port}"
    if extra_apps:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with private_ray_cluster(max(4, os.cpu_count() or 1), ray_env) as address, \
            (workdir / "serve_run.log").open("w") as log:
        process = subprocess.Popen([str(serve_bin), "run", "--address", address, str(copy)], stdout=log,
                                   stderr=subprocess.STDOUT, cwd=workdir, env=dict(os.environ),
                                   start_new_session=True)
        try:
            try:
                wait_healthy(url + "/ready", process, startup_timeout_s, workdir / "serve_run.log", poll_s=1)
            except RuntimeError as exc:  # a clean exit with the reason, not a traceback
                raise SystemExit(str(exc)) from None
            yield url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def served_models(url: str) -> dict[str, str]:
    """{model name: engine} as the server lists them."""
    data = httpx.get(url + "/v1/models", timeout=30, trust_env=False).json()["data"]
    return {m["id"]: m.get("engine", "?") for m in data}


# ---- peers ---------------------------------------------------------------------------------------
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
