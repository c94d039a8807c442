"""A replica keeps serving the others while one request is slow to tokenize or fails, and reports a
dead engine thread to Serve's health check.

The first tests run ``ModelReplica`` in-process (the real tiny-mdlm, engine and step loop, no Ray):
they gate or break one request from inside and watch its neighbours. The last one goes through
Ray and HTTP, with the test-only ``FailingReplica`` (``tests/serve/faulty_replica.py``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import pytest
import requests

from dfast_serve.config import DiffusionOptions
from dfast_serve.engine import SamplingParams
from dfast_serve.wire import StreamingChunk, APIError, ReplicaRequest
from dfast_serve.serve.replicas import ModelReplica
from tests.serve.faulty_replica import FAIL_MARK, FailingReplica
from tests.serve.sse import assert_error_shape

# 64 forward passes and ~27 chunks: a neighbour that keeps streaming while a test watches.
STEADY = DiffusionOptions(ultra_fast=False, block_length=8, steps=64)
MODEL = {"name": "tiny-mdlm", "engine": "diffusion"}
GATE_S = 60  # how long a gated request waits for its neighbour before the test fails


def replica_request(prompt: str, max_tokens: int = 64, diffusion: DiffusionOptions = STEADY) -> ReplicaRequest:
    return ReplicaRequest(f"test-{uuid.uuid4().hex}", SamplingParams(max_tokens=max_tokens), prompt=prompt,
                          diffusion=diffusion)


async def drain(replica: ModelReplica, request: ReplicaRequest, on_chunk: Any = None) -> list[Any]:
    items = []
    async for item in replica.generate(request):
        items.append(item)
        if on_chunk is not None:
            on_chunk(item)
    return items


@pytest.fixture(scope="module")
def replica() -> ModelReplica:
    return ModelReplica.func_or_class(MODEL, STEADY, {"max_ongoing_requests": 8})


def test_a_long_prompt_is_tokenized_while_other_streams_keep_receiving_chunks(replica):
    """A 200k-character prompt's tokenization is held until a running stream has received three
    more chunks. Run on the event loop, it would hold those chunks back and time out the gate."""
    received: list[StreamingChunk] = []
    during_encode: list[int] = []
    gate = threading.Event()
    encode_prompt = replica.model.encode_prompt
    huge = "And God said, Let there be light. " * 6000

    def gated_encode(text: str) -> list[int]:
        if text == huge:
            at_start = len(received)
            gate.wait(GATE_S)
            during_encode.append(len(received) - at_start)
        return encode_prompt(text)

    def on_neighbour_chunk(chunk: StreamingChunk) -> None:
        received.append(chunk)
        if len(received) >= start_count + 3:
            gate.set()

    async def scenario() -> list[Any]:
        neighbour = asyncio.create_task(drain(replica, replica_request("In the beginning"), on_neighbour_chunk))
        while not received:
            await asyncio.sleep(0.01)
        refused = await drain(replica, replica_request(huge, max_tokens=8))
        await neighbour
        return refused

    replica.model.encode_prompt = gated_encode
    try:
        start_count = 1
        refused = asyncio.run(asyncio.wait_for(scenario(), GATE_S * 2))
    finally:
        replica.model.encode_prompt = encode_prompt
    assert gate.is_set(), "no chunk of the other stream arrived while the long prompt was tokenized"
    assert during_encode and during_encode[0] >= 2, during_encode
    assert len(refused) == 1 and isinstance(refused[0], APIError), refused
    assert refused[0].code == "context_length_exceeded" and refused[0].param == "prompt"
    assert received[-1].finish_reason in ("stop", "length")


def test_a_request_whose_generation_fails_ends_with_an_error_and_its_batch_mate_finishes():
    replica = FailingReplica(MODEL, STEADY, {"max_ongoing_requests": 8})
    mate, doomed = replica_request("In the beginning"), replica_request(FAIL_MARK + "And God said")

    async def scenario() -> tuple[list[Any], list[Any]]:
        """The doomed request joins once the mate has run a pass, so it never runs a pass alone."""
        running = asyncio.create_task(drain(replica, mate))
        deadline = time.monotonic() + GATE_S
        while replica.engine.forward_passes == passes_before:
            assert time.monotonic() < deadline, "the mate never ran a pass"
            await asyncio.sleep(0.005)
        doomed_items = await drain(replica, doomed)
        return await running, doomed_items

    passes_before = replica.engine.forward_passes
    mate_items, doomed_items = asyncio.run(asyncio.wait_for(scenario(), 120))
    *doomed_chunks, error = doomed_items
    assert doomed_chunks and all(isinstance(c, StreamingChunk) for c in doomed_chunks)
    assert isinstance(error, APIError) and (error.status, error.code) == (500, "generation_failed")
    assert "injected" not in error.message and "Error" not in error.message
    assert all(isinstance(c, StreamingChunk) for c in mate_items)
    assert mate_items[-1].finish_reason in ("stop", "length") and mate_items[-1].nfe == 64
    # They shared steps: 64 passes for the mate, and the doomed request's first pass, which went first in a step of
    # its own (a newcomer's, replica.pass_piece_tokens being on); not 64 + all of the doomed request's own.
    assert replica.engine.forward_passes - passes_before == 65
    assert replica.stats()["in_flight"] == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected SystemExit
def test_a_dead_engine_thread_fails_the_health_check_and_every_request_gets_an_error():
    replica = ModelReplica.func_or_class(MODEL, STEADY, {"max_ongoing_requests": 8})
    replica.check_health()  # healthy

    def die() -> None:
        raise SystemExit  # escapes ``except Exception``: the thread ends

    async def scenario() -> tuple[list[Any], list[Any]]:
        running = asyncio.create_task(drain(replica, replica_request("In the beginning")))
        deadline = time.monotonic() + 60
        while replica._loop.alive:
            assert time.monotonic() < deadline, "the engine thread did not stop"
            await asyncio.sleep(0.01)
        return await running, await drain(replica, replica_request("And God said"))

    replica.engine.step = die
    running, later = asyncio.run(asyncio.wait_for(scenario(), 120))
    for items in (running, later):
        assert isinstance(items[-1], APIError) and items[-1].code == "generation_failed", items
    with pytest.raises(RuntimeError, match="engine thread"):
        replica.check_health()


# ---- through Ray and HTTP ---------------------------------------------------------------------------
def _test_app(server, deployment_name: str, name: str, max_ongoing_requests: int) -> str:
    """Deploy an app whose only model replica is the test-only ``faulty_replica.<deployment_name>`` under
    ``/<name>``; its URL root once it is ready."""
    from ray import cloudpickle, serve

    from dfast_serve.serve.app import compose_app
    from tests.serve import faulty_replica

    # Ray's processes (the Serve controller, the replica) cannot import the tests package: send the
    # test-only class by value.
    cloudpickle.register_pickle_by_value(faulty_replica)
    args = {"models": [{**MODEL, "replica": {"num_cpus": 0.5, "max_ongoing_requests": max_ongoing_requests}}],
            "router": {"num_cpus": 0.25, "on_head": False}}
    serve.run(compose_app(args, getattr(faulty_replica, deployment_name)), name=name, route_prefix=f"/{name}")
    url = f"{server.base_url}/{name}"
    deadline = time.monotonic() + 240
    while requests.get(url + "/ready", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, f"the {name} app did not become ready"
        time.sleep(1)
    return url


@pytest.fixture(scope="module")
def failing_app(server) -> str:
    """A third app whose only model replica is the test-only ``FailingReplica``; its URL root."""
    from ray import serve

    yield _test_app(server, "FailingReplicaDeployment", "failing", 4)
    serve.delete("failing")


def _stream(url: str, prompt: str, out: dict[str, Any], started: threading.Event | None = None) -> None:
    body = {"model": MODEL["name"], "prompt": prompt, "max_tokens": 64, "stream": True,
            "dfast": {"ultra_fast": False, "block_length": 8, "steps": 64}}
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=120) as response:
        out["status"] = response.status_code
        events = []
        for line in response.iter_lines(decode_unicode=True):
            if line:
                events.append(line[len("data: "):])
                if started is not None:
                    started.set()
        out["events"] = events


def test_through_ray_a_request_that_fails_mid_stream_ends_with_an_error_event_and_its_batch_mate_finishes(
        failing_app):
    mate: dict[str, Any] = {}
    doomed: dict[str, Any] = {}
    mate_streaming = threading.Event()
    threads = [threading.Thread(target=_stream, args=(failing_app, "In the beginning", mate, mate_streaming))]
    threads[0].start()
    assert mate_streaming.wait(120), "the first stream never started"
    threads.append(threading.Thread(target=_stream, args=(failing_app, FAIL_MARK + "And God said", doomed)))
    threads[1].start()
    for thread in threads:
        thread.join(180)
        assert not thread.is_alive(), "a stream hung"
    assert doomed["status"] == 200 and doomed["events"][-1] == "[DONE]"
    error = json.loads(doomed["events"][-2])["error"]
    assert error["code"] == "generation_failed" and set(error) == {"message", "type", "param", "code"}
    assert "Error" not in error["message"]
    assert any("choices" in json.loads(e) for e in doomed["events"][:-2])  # it failed mid-stream
    assert mate["status"] == 200 and mate["events"][-1] == "[DONE]"
    assert json.loads(mate["events"][-2])["choices"][0]["finish_reason"] in ("stop", "length")


# ---- a replica whose device broke is replaced ------------------------------------------------------------
@pytest.fixture(scope="module")
def breaking_app(server) -> str:
    """A fourth app whose only model replica is the test-only ``BreakingReplica``; its URL root."""
    from ray import serve

    yield _test_app(server, "BreakingReplicaDeployment", "breaking", 2)
    serve.delete("breaking")


def _model_replicas(app: str) -> list[str]:
    import ray

    prefix = f"SERVE_REPLICA::{app}#DiffusionReplica#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def test_through_ray_a_replica_whose_every_pass_fails_is_replaced_by_a_whole_one(breaking_app):
    """Every pass failing (a sticky device error) fails each request with an error, turns the replica's health
    check bad after ``UNHEALTHY_AFTER_FAILED_PASSES`` failed passes, and Serve replaces it; the new one serves."""
    from tests.serve.faulty_replica import BREAK_MARK

    (broken,) = _model_replicas("breaking")
    body = {"model": MODEL["name"], "max_tokens": 4, "temperature": 0}
    url = breaking_app + "/v1/completions"
    failed = 0
    deadline = time.monotonic() + 180
    prompt = BREAK_MARK + "In the beginning"
    while broken in _model_replicas("breaking"):  # until Serve has replaced it
        assert time.monotonic() < deadline, f"the broken replica was not replaced ({failed} requests failed on it)"
        response = requests.post(url, json={**body, "prompt": prompt}, timeout=60)
        if response.status_code != 200:  # the broken replica's answer (or 503 while it is being replaced)
            assert response.json()["error"]["code"] in ("generation_failed", "replica_failed",
                                                         "replica_unavailable"), response.text
            failed += 1
        prompt = "In the beginning"
        time.sleep(0.2)
    assert failed >= 1
    while True:  # the replacement starts whole and serves
        response = requests.post(url, json={**body, "prompt": "And God said"}, timeout=60)
        if response.status_code == 200:
            break
        assert_error_shape(response, 503)
        assert time.monotonic() < deadline, "no whole replica came back"
        time.sleep(1)
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert _model_replicas("breaking") and broken not in _model_replicas("breaking")
