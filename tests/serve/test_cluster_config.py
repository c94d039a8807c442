"""serve_config.cluster.yaml itself on the session's two-node loopback cluster (CPU head + fake-GPU
A100-40G worker): both models healthy (the AR one on vLLM, in its own environment), the routers on the head, the model replicas on the GPU
worker, a stream from each model, and the API key from a secret file required.

The file is loaded through the documented override mechanism (dfast_serve.serve.config_file), with
only what this machine cannot provide changed: the key file path, CPU sizes (the pool's 8 CPUs
per replica), GPU fractions (two replicas share the one fake GPU), and the application's name
and route prefix (the session's Serve already runs the main app at /). It is deployed with
serve.run rather than a second `serve run`: a declarative deploy replaces the applications of
the previous one, which would take down the session's main app.
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from ray import serve

from dfast_serve.config import ServerConfig
from dfast_serve.serve.app import build_app, replica_deployment_name
from dfast_serve.serve.config_file import application, load_serve_config
from tests.serve.conftest import ROOT, STARTUP_TIMEOUT_S
from tests.serve.helpers import VLLM_PYTHON, require_vllm_environment

NAME, PREFIX, KEY = "cluster", "/cluster", "cluster-test-key"
MODELS = ("tiny-mdlm", "smollm2-135m")


def overrides(key_file) -> list[str]:
    app = "applications.dfast_serve"
    sets = [f"{app}.args.api_key_file={key_file}", f"{app}.args.router.num_cpus=0.1"]
    for model in MODELS:
        sets += [f"{app}.args.models.{model}.replica.num_cpus=0.1", f"{app}.args.models.{model}.replica.num_gpus=0.5"]
    # The AR model's vLLM environment is this tree's (the pool's path does not exist here); eager: starts in seconds.
    sets += [f"{app}.args.models.smollm2-135m.vllm.python={VLLM_PYTHON}",
             f"{app}.args.models.smollm2-135m.vllm.enforce_eager=true"]
    return sets + [f"{app}.route_prefix={PREFIX}", f"{app}.name={NAME}"]  # renamed last: later paths use the name


@pytest.fixture(scope="module")
def cluster_app(server, tmp_path_factory):
    require_vllm_environment()  # the file serves its AR model with engine: vllm
    key_file = tmp_path_factory.mktemp("secrets") / "api_key"
    key_file.write_text(KEY + "\n")
    app = application(load_serve_config(ROOT / "serve_config.cluster.yaml", overrides(key_file)), NAME)
    serve.run(build_app(app["args"]), name=app["name"], route_prefix=app["route_prefix"], blocking=False)
    url = server.base_url + PREFIX
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            health = requests.get(url + "/ready", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
            if health.status_code == 200:
                break
        except requests.RequestException:
            pass
        status = serve.status().applications.get(NAME)
        assert status is None or status.status != "DEPLOY_FAILED", status.message
        assert time.monotonic() < deadline, f"the cluster config did not become healthy: {status}"
        time.sleep(1)
    yield url, ServerConfig.model_validate({**app["args"], "api_key": KEY})
    serve.delete(NAME)


def test_both_models_healthy_and_each_streams_with_the_key(cluster_app):
    url, _ = cluster_app
    auth = {"Authorization": f"Bearer {KEY}"}
    assert requests.get(url + "/ready", headers=auth, timeout=10).json()["models"] == {m: "ok" for m in MODELS}
    body = {"prompt": "In the beginning", "max_tokens": 8, "stream": True}
    assert requests.post(url + "/v1/completions", json={**body, "model": MODELS[0]}, timeout=30).status_code == 401
    for model in MODELS:
        with requests.post(url + "/v1/completions", json={**body, "model": model}, stream=True, timeout=120,
                           headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status_code == 200, response.text
            events = [line[len("data: "):] for line in response.iter_lines(decode_unicode=True) if line]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e).get("choices"))
        assert text, (model, events)


def test_routers_on_the_head_and_model_replicas_on_the_gpu_worker(cluster_app, ray_cluster):
    from ray._private.state import actors  # GCS actor table: works without the dashboard

    _, config = cluster_app
    replica_names = {replica_deployment_name(m, config) for m in config.models}
    nodes: dict[str, set[str]] = {}
    for actor in actors().values():
        kind, _, rest = actor["ActorClassName"].partition(":")
        app_name, _, deployment = rest.partition(":")
        if kind == "ServeReplica" and app_name == NAME and actor["State"] == "ALIVE":
            nodes.setdefault(deployment, set()).add(actor["Address"]["NodeID"])
    head, worker = ray_cluster.head_node.node_id, next(iter(ray_cluster.worker_nodes)).node_id
    routers = set(nodes) - replica_names
    assert len(routers) == 1 and nodes[routers.pop()] == {head}
    assert {name: nodes.get(name) for name in replica_names} == {name: {worker} for name in replica_names}


def test_a_ray_task_sees_the_proxy_host_build_app_checks(server):
    """build_app runs in a Ray task of the Serve controller: from a task, proxy_host() must reach
    Serve's HTTP options (here 127.0.0.1, so a key-less app may start; 0.0.0.0 would refuse)."""
    import ray

    from dfast_serve.serve.app import proxy_host

    assert ray.get(ray.remote(num_cpus=0)(proxy_host).remote(), timeout=60) == "127.0.0.1"
