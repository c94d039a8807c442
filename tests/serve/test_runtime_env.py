"""DFASTLLM_* variables given the documented way: the application's ``runtime_env.env_vars``.

Both applications are deployed as ``serve run <config>`` deploys them, through the Serve
controller's declarative config, so ``build_app`` runs as the controller's Ray task with the
application's runtime env; nothing is set in this process. The main app's own config is applied
again unchanged alongside (a declarative apply replaces the whole set of config-deployed apps) and
restored alone at the end, which removes the two apps.
"""

from __future__ import annotations

import json
import time

import requests
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from tests.serve.conftest import STARTUP_TIMEOUT_S, replica_stats
from tests.serve.sse import assert_error_shape
from tests.serve.helpers import DIFFUSION, PROMPT

KEY = "key-from-runtime-env"
TINY = [{"name": DIFFUSION, "engine": "diffusion", "replica": {"num_cpus": 0.25, "max_ongoing_requests": 2}}]
ENV_APP = {
    "name": "from_env", "route_prefix": "/from_env", "import_path": "dfast_serve.serve.app:build_app",
    "runtime_env": {"env_vars": {"DFASTLLM_INSTANT_FIRST_TOKEN": "false",
                                 "DFASTLLM_STREAM_CONFIDENCE_THRESHOLD": "0.55",
                                 "DFASTLLM_API_KEY": KEY}},
    "args": {"models": TINY, "router": {"num_cpus": 0.1}, "require_api_key": True},
}
ENV_ULTRA_FAST = {"enable_instant_first_token": False, "stream_confidence_threshold": 0.55}
# Meant to require a key that never reached it (as when DFASTLLM_API_KEY is exported in the shell
# of a `serve run --address ...`): it must not start.
KEYLESS_APP = {
    "name": "keyless", "route_prefix": "/keyless", "import_path": "dfast_serve.serve.app:build_app",
    "args": {"models": TINY, "router": {"num_cpus": 0.1}, "require_api_key": True},
}


def _apply(server, *extra: dict) -> None:
    config = {**server.config, "applications": server.config["applications"] + list(extra)}
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


def _stream(url: str, body: dict) -> list[dict]:
    """The native stream's chunks (text and pass count of each)."""
    with requests.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}, stream=True,
                       timeout=120) as response:
        assert response.status_code == 200, response.text
        chunks = [json.loads(line[len("data: "):]) for line in response.iter_lines(decode_unicode=True)
                  if line.startswith("data: {")]
    assert chunks and chunks[-1]["is_final"], chunks
    return [{"new_text": c["new_text"], "nfe": c["nfe"]} for c in chunks]


def _status(name: str):
    return serve.status().applications.get(name)


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {STARTUP_TIMEOUT_S} s"
        time.sleep(1)


def test_runtime_env_vars_reach_the_replicas_and_a_missing_required_key_stops_the_app(server):
    _apply(server, ENV_APP, KEYLESS_APP)
    try:
        _wait(lambda: getattr(_status("keyless"), "status", None) == "DEPLOY_FAILED", "keyless DEPLOY_FAILED")
        assert "DFASTLLM_API_KEY" in _status("keyless").message and "runtime_env" in _status("keyless").message
        assert requests.get(server.base_url + "/keyless/health", timeout=10).status_code == 404  # never served
        _wait(lambda: getattr(_status("from_env"), "status", None) == "RUNNING", "from_env RUNNING")

        options = replica_stats("DiffusionReplica", "from_env")["diffusion"]["ultra_fast_config"]
        assert options["enable_instant_first_token"] is False and options["stream_confidence_threshold"] == 0.55
        main = replica_stats("DiffusionReplica")["diffusion"]["ultra_fast_config"]
        assert main["enable_instant_first_token"] is True  # the other app's env stays its own

        url = server.base_url + "/from_env/v1/dfast/stream"
        body = {"model": DIFFUSION, "prompt": PROMPT, "max_tokens": 32}
        assert_error_shape(requests.post(url, json=body, timeout=10), 401)  # the key came from env_vars
        # The env's options are the app's defaults: greedy, a request that leaves them out decodes exactly
        # as one that sets them, and not as one that turns the instant first token back on.
        greedy = {**body, "temperature": 0}
        from_env = _stream(url, greedy)
        assert from_env == _stream(url, {**greedy, "dfast": {"ultra_fast_config": ENV_ULTRA_FAST}})
        instant = _stream(url, {**greedy, "dfast": {"ultra_fast_config": {"enable_instant_first_token": True}}})
        assert instant[0]["nfe"] == 1 and from_env != instant, (from_env, instant)
    finally:
        _apply(server)
        _wait(lambda: _status("from_env") is None and _status("keyless") is None, "removal of the env apps")
    assert requests.get(server.base_url + "/ready", timeout=30).status_code == 200
