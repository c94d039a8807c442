"""Metrics complete across router replicas: an app with two routers, requests through both, and the
request counters scraped from every node's Ray metrics agent add up to the requests sent (per-router
``/metrics`` shows one replica's share only)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
import requests
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from dfast_serve.serve.app import build_app
from tests.serve.conftest import STARTUP_TIMEOUT_S

APP, PREFIX, MODEL = "two_routers", "/two-routers", "tiny-mdlm"
ARGS = {
    "models": [{"name": MODEL, "engine": "diffusion", "replica": {"num_cpus": 0.1, "max_ongoing_requests": 8}}],
    "router": {"num_replicas": 2, "num_cpus": 0.1},
}
WAVES, PER_WAVE = 4, 4
SCRAPE_TIMEOUT_S = 60


def scrape(sample_name: str, application: str) -> dict[str, float]:
    """``sample_name`` summed per router replica over every node's metrics export port."""
    per_replica: dict[str, float] = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        text = requests.get(f"http://127.0.0.1:{node['MetricsExportPort']}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == sample_name and sample.labels.get("application") == application:
                    replica = sample.labels["replica"]
                    per_replica[replica] = per_replica.get(replica, 0.0) + sample.value
    return per_replica


@pytest.fixture(scope="module")
def two_routers(server):
    serve.run(build_app(ARGS), name=APP, route_prefix=PREFIX)
    url = server.base_url + PREFIX
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while requests.get(url + "/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the two-router app did not become healthy"
        time.sleep(1)
    # A Ray worker's metrics reach its node's agent only once its exporter has connected, which
    # takes a few seconds after the replica starts; counts recorded before that are lost.
    while sum(scrape("ray_dfast_router_up", APP).values()) != 2:
        assert time.monotonic() < deadline, f"router_up: {scrape('ray_dfast_router_up', APP)}"
        time.sleep(1)
    yield url
    serve.delete(APP)


def complete(url: str) -> int:
    body = {"model": MODEL, "prompt": "In the beginning", "max_tokens": 4}
    return requests.post(url + "/v1/completions", json=body, timeout=60).status_code


def test_request_counters_scraped_from_ray_add_up_across_two_routers(two_routers):
    sent = WAVES * PER_WAVE
    with ThreadPoolExecutor(PER_WAVE) as pool:  # concurrent waves: the proxy spreads them over both routers
        for _ in range(WAVES):
            assert list(pool.map(lambda _: complete(two_routers), range(PER_WAVE))) == [200] * PER_WAVE
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    while True:
        counts = scrape("ray_dfast_request_success_total", APP)
        ttfts = scrape("ray_dfast_time_to_first_token_seconds_count", APP)
        if sum(counts.values()) == sent and sum(ttfts.values()) == sent:
            break
        assert time.monotonic() < deadline, f"scraped {counts} / {ttfts}, sent {sent}"
        time.sleep(1)
    assert len(counts) == 2 and all(counts.values()), counts  # both router replicas relayed and reported
    # One router's own registry: a scrape through the proxy shows only that replica's share.
    local = requests.get(two_routers + "/metrics", timeout=10).text
    own = sum(s.value for f in text_string_to_metric_families(local) for s in f.samples
              if s.name == "dfast:request_success_total" and s.labels.get("model_name") == MODEL)
    assert own in counts.values()
