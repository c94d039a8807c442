"""One Ray cluster per test session, and the product started the way users start it.

The cluster has two "nodes" on this machine, both bound to 127.0.0.1: a head with no GPU and
a worker that advertises one (fake) GPU and the A100 labels (A100, A100-40G), so that GPU placement
can be tested without a GPU. The app is started by ``serve run`` on a copy of
``serve_config.yaml`` that differs only in its HTTP port.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "dfast_serve"
STARTUP_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    config: dict  # the serve_config.yaml it runs (its declarative Serve config)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray._private import auto_init_hook
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "resources": {"head_node": 1},
        # Workers report Ray metrics to their node's agent every second (default 10 s), so tests that
        # scrape the metrics export port wait seconds, not tens of seconds.
        "_system_config": {"metrics_report_interval_ms": 1000},
    })
    cluster.add_node(num_cpus=2, num_gpus=1, node_ip_address="127.0.0.1",
                     resources={"accelerator_type:A100": 1, "accelerator_type:A100-40G": 1, "gpu_worker_node": 1})
    ray.init(address=cluster.address, include_dashboard=False)
    yield cluster
    import logging

    from ray import serve

    serve.shutdown()
    # The handles this process made keep routers whose background task pushes handle metrics to the
    # (now gone) controller every few seconds; after ray.shutdown() each push logs a harmless traceback
    # ("Ray has not been started yet") that reads like a failure at the end of the run. Silence it.
    logging.getLogger("ray.serve").setLevel(logging.CRITICAL)
    # Serve handles made in this process push metrics from background threads; after
    # ray.shutdown() their next call would silently re-initialise Ray (auto-connect), and
    # cluster.shutdown() then fails: "Removing a node that is connected to this Ray client".
    auto_init_hook.enable_auto_connect = False
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def server(ray_cluster, tmp_path_factory) -> Server:
    """``serve run serve_config.yaml`` against the session cluster; yields its base URL."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    workdir = tmp_path_factory.mktemp("serve_run")
    config_path = workdir / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "serve_run.log"
    serve_bin = Path(sys.executable).with_name("serve")
    process = subprocess.Popen(
        [str(serve_bin), "run", "--address", ray_cluster.address, str(config_path)],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
    )
    srv = Server(f"http://127.0.0.1:{port}", process, log_path, config)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"serve run exited with {process.returncode}:\n{srv.log_tail()}")
        try:
            if requests.get(srv.base_url + "/ready", timeout=10).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"serve run did not become ready in {STARTUP_TIMEOUT_S} s:\n{srv.log_tail()}")
        time.sleep(1)
    yield srv
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def replica_stats(deployment: str, app_name: str = APP_NAME) -> dict:
    """A replica's counters (forward passes, in flight), read through a Serve handle."""
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name=app_name).stats.remote().result(timeout_s=30)


@dataclass
class SmallApp:
    """The second app's HTTP root (``<base>/small``), its name and API key."""

    url: str
    name: str
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


SMALL_APP_ARGS = {
    "models": [{"name": "tiny-mdlm", "engine": "diffusion",
                "replica": {"num_cpus": 0.5, "max_ongoing_requests": 1, "max_queued_requests": 1}}],
    "router": {"num_cpus": 0.25},
    "request_timeout_s": 4,
    "queue_timeout_s": 2,
    "retry_after_s": 2,
    "body_read_timeout_s": 2,
    "native_full_text_chars": 200,
    "api_key": "small-app-test-key",
}


@pytest.fixture(scope="session")
def small_app(server) -> SmallApp:
    """A second, small app on the session cluster, for tests that need tight limits or break things.

    One tiny-mdlm replica that generates one request at a time and queues one more, a 4 s
    request timeout, a 2 s queue timeout, a 2 s body read deadline and an API key; served under ``/small`` by the same
    proxy as the main app, which stays untouched. Its replica is paced (``faulty_replica.PacedReplica``: every
    pass takes at least 50 ms), so a 256-pass request outlasts the timeouts whatever the host.
    """
    from ray import cloudpickle, serve

    from dfast_serve.serve.app import compose_app
    from tests.serve import faulty_replica

    cloudpickle.register_pickle_by_value(faulty_replica)  # Ray's processes cannot import the tests package
    name = "small"
    serve.run(compose_app(SMALL_APP_ARGS, faulty_replica.PacedReplicaDeployment), name=name, route_prefix="/small")
    app = SmallApp(server.base_url + "/small", name, SMALL_APP_ARGS["api_key"])
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while requests.get(app.url + "/ready", headers=app.auth, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the small app did not become ready"
        time.sleep(1)
    yield app
    serve.delete(name)
