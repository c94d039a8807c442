"""Auth, backpressure, timeouts, slow bodies, health probes and a replica crash, on the small second
app (tests/serve/conftest.py): one tiny-mdlm replica that generates one request at a time and
queues one more, a 4 s request timeout, a 2 s queue timeout, a 2 s body read deadline,
Retry-After 2 and an API key. The crash test comes last. Waits poll with a deadline; no test
asserts how long something took beyond the limit it checks."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
import requests

from tests.serve.conftest import SMALL_APP_ARGS, SmallApp, replica_stats
from tests.serve.sse import assert_error_shape
from tests.serve.helpers import DIFFUSION, PROMPT, SLOW_FIELDS, replica_idle

SHORT = {"model": DIFFUSION, "prompt": PROMPT, "max_tokens": 32}
SLOW = {"model": DIFFUSION, "prompt": PROMPT, **SLOW_FIELDS, "stream": True}
RETRY_AFTER = str(SMALL_APP_ARGS["retry_after_s"])


def _post(app: SmallApp, body: dict, timeout: float = 60, **kwargs: Any) -> requests.Response:
    return requests.post(app.url + "/v1/completions", json=body, headers=app.auth, timeout=timeout, **kwargs)


def _events(response: requests.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines(decode_unicode=True) if line]


def _forward_passes(app: SmallApp) -> int:
    return replica_stats("DiffusionReplica", app.name)["forward_passes"]


# ---- auth -------------------------------------------------------------------------------------------
def test_api_key_is_required_on_v1_routes(small_app):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": small_app.api_key},
                    {"Authorization": f"Basic {small_app.api_key}"}):
        response = requests.post(small_app.url + "/v1/completions", json=SHORT, headers=headers, timeout=10)
        error = assert_error_shape(response, 401)
        assert error["code"] == "invalid_api_key" and response.headers["WWW-Authenticate"] == "Bearer"
    assert_error_shape(requests.get(small_app.url + "/v1/models", timeout=10), 401)
    models = requests.get(small_app.url + "/v1/models", headers={"Authorization": f"bearer {small_app.api_key}"},
                          timeout=10)
    assert models.status_code == 200 and models.json()["data"][0]["id"] == DIFFUSION
    assert _post(small_app, SHORT).status_code == 200


def test_health_stays_open_and_ready_and_metrics_need_the_key(small_app):
    assert requests.get(small_app.url + "/health", timeout=10).status_code == 200
    for path in ("/ready", "/metrics"):
        error = assert_error_shape(requests.get(small_app.url + path, timeout=10), 401)
        assert error["code"] == "invalid_api_key"
    assert requests.get(small_app.url + "/ready", headers=small_app.auth, timeout=10).status_code == 200
    metrics = requests.get(small_app.url + "/metrics", headers=small_app.auth, timeout=10)
    assert "dfast:time_to_first_token_seconds" in metrics.text


def test_a_flood_of_readiness_probes_takes_no_generation_slot(small_app):
    """64 concurrent /ready beside one request on a replica that generates one request and queues one more:
    probes never reach the replica (Serve's controller answers), so all are 200 and the request is served."""
    def probe(_: int) -> int:
        return requests.get(small_app.url + "/ready", headers=small_app.auth, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        probes = pool.map(probe, range(64))
        answer = _post(small_app, SHORT)
        codes = list(probes)
    assert codes == [200] * 64
    assert answer.status_code == 200, answer.text


# ---- a client that never reads ----------------------------------------------------------------------
def test_a_client_that_never_reads_does_not_hold_its_generation_and_gets_a_bounded_stream(small_app):
    """A native stream of a long answer whose client reads nothing: the generation is not held by it (the
    replica goes idle, at the answer's end or the request timeout, while nothing has been read), and what was
    buffered for the client repeats at most ``native_full_text_chars`` of full_text (past it events carry null,
    the final one the whole text), so its size grows with the answer, not with its square."""
    body = {"model": DIFFUSION, "prompt": PROMPT, "max_tokens": 96, "ignore_eos": True}  # passes run whole
    with requests.post(small_app.url + "/v1/dfast/stream", json=body, headers=small_app.auth, stream=True,
                       timeout=60) as response:
        assert response.status_code == 200
        replica_idle("DiffusionReplica", small_app.name)  # polled with a deadline; not one byte read so far
        lines = [line[len("data: "):] for line in response.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    chunks = [e for e in events if "error" not in e]
    ended = chunks[-1]["is_final"] or events[-1]["error"]["code"] == "timeout"
    assert ended, events[-1]
    repeated = [len(e["full_text"]) for e in chunks if e["full_text"] is not None and not e["is_final"]]
    assert sum(repeated) <= SMALL_APP_ARGS["native_full_text_chars"]
    # the bound was reached: later events carry none
    assert any(e["full_text"] is None for e in chunks), [len(e["new_text"]) for e in chunks]
    if chunks[-1]["is_final"]:
        assert chunks[-1]["full_text"] == "".join(e["new_text"] for e in chunks)


# ---- health under load ------------------------------------------------------------------------------
def test_a_burst_of_health_probes_answers_200_while_the_only_slot_generates_and_takes_no_slot(small_app):
    """/health is liveness: 300 concurrent probes while the replica's single slot is busy all get 200,
    none of them reaches the replica (its request count moves only by the running stream), and the
    running stream goes on to its normal end (the request timeout)."""
    before = replica_stats("DiffusionReplica", small_app.name)["requests"]
    with _post(small_app, SLOW, stream=True) as response:
        assert response.status_code == 200
        lines = response.iter_lines(decode_unicode=True)
        assert "error" not in json.loads(next(line for line in lines if line)[len("data: "):])
        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(lambda _: requests.get(small_app.url + "/health", timeout=60).status_code,
                                  range(300)))
        assert codes == [200] * 300
        rest = [line[len("data: "):] for line in lines if line]
    assert rest[-1] == "[DONE]" and json.loads(rest[-2])["error"]["code"] == "timeout"
    assert replica_stats("DiffusionReplica", small_app.name)["requests"] - before == 1


# ---- slow bodies ------------------------------------------------------------------------------------
def _stalled_request(app: SmallApp, body_part: bytes, deadline_s: float = 60) -> tuple[int, bytes]:
    """A request that declares a 1,000-byte body, sends ``body_part`` and stops; the response."""
    url = requests.utils.urlparse(app.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=deadline_s)  # the deadline
    try:
        conn.putrequest("POST", url.path + "/v1/completions")
        for name, value in {"Content-Type": "application/json", "Content-Length": "1000", **app.auth}.items():
            conn.putheader(name, value)
        conn.endheaders(message_body=body_part)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_body_that_stalls_gets_408_in_the_error_shape_and_frees_the_slot(small_app):
    status, raw = _stalled_request(small_app, b'{"model": "tiny-mdlm", "pro')
    assert status == 408, raw
    error = json.loads(raw)["error"]
    assert error["code"] == "body_read_timeout" and set(error) == {"message", "type", "param", "code"}
    assert _post(small_app, SHORT).status_code == 200


# ---- backpressure -----------------------------------------------------------------------------------
def _stream_or_refusal(app: SmallApp) -> tuple[int, Any]:
    with _post(app, {**SHORT, "stream": True}, stream=True) as response:
        if response.status_code == 200:
            return 200, _events(response)
        return response.status_code, (response.headers.get("Retry-After"), response.json())


def test_more_clients_than_capacity_get_503_with_retry_after_and_admitted_ones_finish(small_app):
    clients = 8  # capacity: one generating, one queued
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: _stream_or_refusal(small_app), range(clients)))
    admitted = [events for status, events in results if status == 200]
    refused = [detail for status, detail in results if status != 200]
    assert admitted and refused, [status for status, _ in results]
    assert all(status in (200, 503) for status, _ in results)
    for events in admitted:
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] in ("stop", "length")
    for retry_after, body in refused:
        assert retry_after == RETRY_AFTER
        assert body["error"]["code"] in ("overloaded", "queue_timeout") and body["error"]["type"] == "server_overloaded"
    assert _post(small_app, SHORT).status_code == 200


# ---- timeouts ---------------------------------------------------------------------------------------
def test_request_timeout_ends_the_stream_and_generation_and_a_queued_request_times_out(small_app):
    before = replica_stats("DiffusionReplica", small_app.name)
    started = time.monotonic()
    with _post(small_app, SLOW, stream=True) as response:
        assert response.status_code == 200
        lines = response.iter_lines(decode_unicode=True)
        first = next(line for line in lines if line)
        assert "error" not in json.loads(first[len("data: "):])
        # The only replica slot is busy: a second request waits in the queue, then gets 503.
        queued_at = time.monotonic()
        queued = _post(small_app, SHORT)
        waited = time.monotonic() - queued_at
        assert_error_shape(queued, 503)
        assert queued.json()["error"]["code"] == "queue_timeout" and queued.headers["Retry-After"] == RETRY_AFTER
        assert waited > 1.5, waited  # not before the queue timeout of 2 s
        rest = [line[len("data: "):] for line in lines if line]
    elapsed = time.monotonic() - started
    assert rest[-1] == "[DONE]"
    error = json.loads(rest[-2])["error"]
    assert error["code"] == "timeout" and set(error) == {"message", "type", "param", "code"}
    assert elapsed > 3.5, elapsed  # not before the request timeout of 4 s
    after = replica_idle("DiffusionReplica", small_app.name)  # the timed-out request left the step loop
    assert after["forward_passes"] - before["forward_passes"] < 256, "the generation ran to its end"
    assert _forward_passes(small_app) == after["forward_passes"], "generation continued after the timeout"
    # the queued request was dropped from the queue, never generated
    assert after["requests"] - before["requests"] == 1 and after["in_flight"] == 0


def test_non_streamed_request_timeout_is_504(small_app):
    response = _post(small_app, {**SLOW, "stream": False})
    error = assert_error_shape(response, 504)
    assert error["code"] == "timeout"


# ---- a client that leaves ----------------------------------------------------------------------------
def test_client_disconnect_stops_generation(small_app):
    """The client reads two chunks of a 256-pass generation and hangs up: the request leaves the
    replica's step loop, which then stays idle, long before the generation's 256 passes."""
    before = _forward_passes(small_app)
    with requests.Session() as session:
        response = session.post(small_app.url + "/v1/completions", json=SLOW, headers=small_app.auth, stream=True,
                                timeout=60)
        assert response.status_code == 200
        events = response.iter_lines()
        assert [next(line for line in events if line) for _ in range(2)]
        at_hang_up = _forward_passes(small_app)
        response.close()
    idle = replica_idle("DiffusionReplica", small_app.name)  # the step loop dropped it: no step runs for it any more
    settled = idle["forward_passes"]
    assert settled - before < 256, "the generation ran to its end"
    # The 4 s request timeout would also end it, after up to 80 more passes of >= 50 ms: the hang-up must
    # stop it within the pass or two in flight while the cancellation crosses the proxy and the handle.
    assert settled - at_hang_up <= 10, f"{settled - at_hang_up} passes after the client left"
    assert _forward_passes(small_app) == settled, "generation continued after the client left"


# ---- a replica crash (last: it replaces the small app's replica) -------------------------------------
def _until(condition: Any, what: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _waiting(app: SmallApp) -> float:
    """The ingress's gauge of requests routed to the model and still waiting for their first chunk."""
    for line in requests.get(app.url + "/metrics", headers=app.auth, timeout=10).text.splitlines():
        if line.startswith("dfast:num_requests_waiting{") and f'model_name="{DIFFUSION}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _replica_actor(app: SmallApp) -> ray.actor.ActorHandle:
    prefix = f"SERVE_REPLICA::{app.name}#DiffusionReplica#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    assert len(names) == 1, names
    return ray.get_actor(names[0], namespace="serve")


def test_replica_crash_ends_in_flight_requests_cleanly_and_the_app_recovers(small_app):
    outcome: dict[str, Any] = {}
    streaming = threading.Event()

    def in_flight() -> None:
        with _post(small_app, SLOW, stream=True) as response:
            outcome["status"] = response.status_code
            events = []
            for line in response.iter_lines(decode_unicode=True):
                if line:
                    events.append(line[len("data: "):])
                    streaming.set()
            outcome["events"] = events

    def queued() -> None:
        outcome["queued"] = _post(small_app, SHORT, timeout=60)

    threads = [threading.Thread(target=in_flight)]
    threads[0].start()
    assert streaming.wait(30)
    threads.append(threading.Thread(target=queued))
    threads[1].start()
    _until(lambda: _waiting(small_app) == 1, "the second request never queued")
    ray.kill(_replica_actor(small_app), no_restart=True)
    killed_at = time.monotonic()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a request hung after the replica died"

    events = outcome["events"]
    assert outcome["status"] == 200 and events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "replica_failed", error
    # The router is alive throughout: liveness holds while Serve replaces the model replica.
    assert requests.get(small_app.url + "/health", timeout=30).status_code == 200
    queued_response = outcome["queued"]
    if queued_response.status_code == 200:  # served by the new replica, if it started within the queue timeout
        assert queued_response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    else:
        assert_error_shape(queued_response, 503)
        assert queued_response.headers["Retry-After"] == RETRY_AFTER

    # Serve starts a new replica; until then requests get a clean 503, never a hang.
    while True:
        response = _post(small_app, SHORT, timeout=60)
        if response.status_code == 200:
            break
        assert_error_shape(response, 503)
        assert time.monotonic() - killed_at < 180, "the replica did not come back"
        time.sleep(0.5)
    print(f"recovered after {time.monotonic() - killed_at:.1f} s")
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    _until(lambda: requests.get(small_app.url + "/ready", headers=small_app.auth, timeout=30).status_code == 200,
           "/ready after recovery")
