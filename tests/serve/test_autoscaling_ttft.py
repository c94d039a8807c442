"""The TTFT trigger of the autoscaling policy inside Ray Serve: with the load far below the
ongoing-requests target, a p90 TTFT over the target scales the model replicas 1 -> 2, and once
requests stop (the replicas' 30 s TTFT window empties) they go back to 1 after the downscale delay.

The app is the product's (build_app, router, HTTP); the TTFT target is made tiny (1 ms, which
every real request misses) instead of making requests slow, and the timings are shortened as in
test_autoscaling_scale.py.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from ray import serve

from dfast_serve.config import ServerConfig
from dfast_serve.serve.app import build_app, replica_deployment_name
from dfast_serve.serve.autoscaling import TTFTAutoscalingPolicyConfig
from tests.serve.autoscaling_helpers import autoscaling_config_for

APP, PREFIX, MODEL = "ttft_autoscale", "/ttft-autoscale", "tiny-mdlm"
SCALE_TIMEOUT_S = 120
# One client, one request at a time: load 1, far below the target of 8 ongoing requests per replica.
POLICY = TTFTAutoscalingPolicyConfig(target_ttft_p90_s=0.001, target_ongoing_requests_per_replica=8.0,
                                     ttft_upscale_min_requests_per_replica=0.0)


def args() -> dict:
    autoscaling = autoscaling_config_for(POLICY, min_replicas=1, max_replicas=2, upscale_delay_s=0.0,
                                         downscale_delay_s=2.0, look_back_period_s=2.0, metrics_interval_s=0.5)
    replica = {"num_cpus": 0.1, "max_ongoing_requests": 8, "autoscaling": autoscaling}
    return {"models": [{"name": MODEL, "engine": "diffusion", "replica": replica}], "router": {"num_cpus": 0.1}}


def running_replicas() -> int:
    deployment = replica_deployment_name(ServerConfig.model_validate(args()).models[0],
                                         ServerConfig.model_validate(args()))
    status = serve.status().applications[APP].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + SCALE_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {SCALE_TIMEOUT_S} s (running: {running_replicas()})"
        time.sleep(0.5)


@pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning")
def test_p90_ttft_over_target_scales_up_without_load_and_recovery_scales_down(server):
    serve.run(build_app(args()), name=APP, route_prefix=PREFIX, blocking=False)
    url = server.base_url + PREFIX
    stop = threading.Event()
    statuses: list[int] = []

    def one_client() -> None:
        body = {"model": MODEL, "prompt": "In the beginning", "max_tokens": 16}
        deadline = time.monotonic() + 2 * SCALE_TIMEOUT_S
        while not stop.is_set() and time.monotonic() < deadline:
            statuses.append(requests.post(url + "/v1/completions", json=body, timeout=60).status_code)

    client = threading.Thread(target=one_client, daemon=True)
    try:
        wait_for(lambda: requests.get(url + "/ready", timeout=10).status_code == 200, "ready")
        assert running_replicas() == 1
        client.start()
        wait_for(lambda: running_replicas() == 2, "scale-up to 2 replicas on TTFT alone")
        stop.set()
        client.join(timeout=60)
        assert statuses and set(statuses) == {200}, statuses
        wait_for(lambda: running_replicas() == 1, "scale-down to 1 replica once TTFT recovered")
    finally:
        stop.set()
        serve.delete(APP)
