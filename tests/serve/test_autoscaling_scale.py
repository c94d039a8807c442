"""The TTFT autoscaling policy running inside Ray Serve: load on a CPU deployment of the diffusion
replica scales it from 1 to 2 replicas, and it goes back to 1 once the load stops.

The policy and the replica's ``record_autoscaling_stats`` are the production ones (the
``autoscaling_config`` dict comes from ``tests/serve/autoscaling_helpers.py``); only the timings
are shortened (metrics pushed every 0.5 s, 2 s look-back, no upscale delay, 2 s downscale delay)
so the test takes seconds instead of minutes.
"""

from __future__ import annotations

import threading
import time

import pytest
from ray import serve

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import SamplingParams
from dfast_serve.serve.autoscaling import TTFTAutoscalingPolicyConfig
from dfast_serve.wire import ReplicaRequest
from dfast_serve.serve.replicas import ModelReplica
from tests.serve.autoscaling_helpers import autoscaling_config_for

APP = "autoscale"
DEPLOYMENT = "AutoscaledReplica"
SCALE_TIMEOUT_S = 120
# A long standard-schedule generation: one forward pass per token keeps a request in flight.
REQUEST = ReplicaRequest("autoscale", SamplingParams(max_tokens=128), prompt="In the beginning",
                         diffusion=DiffusionOptions(ultra_fast=False, block_length=32))


def running_replicas() -> int:
    status = serve.status().applications[APP].deployments[DEPLOYMENT]
    return int(status.replica_states.get("RUNNING", 0))


def wait_for(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} did not happen within {timeout_s} s (running: {running_replicas()})")
        time.sleep(0.5)
    return time.monotonic() - started


# metrics_interval_s is deprecated in Ray 2.60 but is still the knob that sets the push period.
@pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning")
def test_ttft_policy_scales_a_loaded_deployment_up_to_two_and_back_to_one(server):
    policy = TTFTAutoscalingPolicyConfig(target_ongoing_requests_per_replica=1.0, target_ttft_p90_s=30.0)
    autoscaling = autoscaling_config_for(policy, min_replicas=1, max_replicas=2, upscale_delay_s=0.0,
                                         downscale_delay_s=2.0, look_back_period_s=2.0, metrics_interval_s=0.5)
    app = ModelReplica.options(name=DEPLOYMENT, autoscaling_config=autoscaling, max_ongoing_requests=4,
                               ray_actor_options={"num_cpus": 0.25}).bind(
        {"name": "tiny-mdlm-autoscaled", "engine": "diffusion"})
    handle = serve.run(app, name=APP, route_prefix=None)
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_generating() -> None:
        try:
            while not stop.is_set():
                for _ in handle.options(stream=True).generate.remote(REQUEST):
                    if stop.is_set():
                        break
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    try:
        assert running_replicas() == 1
        clients = [threading.Thread(target=keep_generating, daemon=True) for _ in range(3)]
        for client in clients:
            client.start()
        wait_for(lambda: running_replicas() == 2, SCALE_TIMEOUT_S, "scale-up to 2 replicas under load")
        stop.set()
        for client in clients:
            client.join(timeout=60)
        assert not errors, errors
        wait_for(lambda: running_replicas() == 1, SCALE_TIMEOUT_S, "scale-down to 1 replica after the load")
    finally:
        stop.set()
        serve.delete(APP)
