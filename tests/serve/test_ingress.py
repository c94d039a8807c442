"""The ingress's HTTP layer in-process (no Ray): its Starlette app driven through raw ASGI messages
(``ingress_asgi.py``), with the fake replica clients of ``tests/api/fakes.py`` behind ``OpenAIServing``.

Raw ASGI lets a test play a client that trickles its body, stalls, or disconnects mid-body, in
milliseconds; the same behaviours through Ray's HTTP proxy are in ``tests/serve/test_limits.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from dfast_serve.wire import DiffusionOptions
from tests.api.fakes import DIFFUSION, HANG, STORY, errors
from tests.serve.ingress_asgi import DISCONNECT, error, ingress_app, run, sse_events

GOOD = json.dumps({"model": DIFFUSION, "prompt": "In the beginning", "max_tokens": 8}).encode()


# ---- item 9: no redirects ---------------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [("POST", "/v1/completions/"), ("POST", "/v1/chat/completions/"),
                                         ("GET", "/v1/models/"), ("GET", "/health/")])
def test_a_trailing_slash_is_a_404_in_the_error_shape_never_a_redirect(method, path):
    app, clients = ingress_app()
    status, headers, raw = run(app, path, [GOOD], method=method)
    assert error(status, headers, raw, 404)["code"] == "not_found"
    assert "location" not in headers
    assert not clients[DIFFUSION].requests


# ---- item 4: a body read deadline -------------------------------------------------------------------
def test_a_body_not_received_within_body_read_timeout_s_is_408():
    app, clients = ingress_app(body_read_timeout_s=0.05)
    status, headers, raw = run(app, "/v1/completions", [b'{"model": ', b'"tiny', HANG])
    err = error(status, headers, raw, 408)
    assert err["code"] == "body_read_timeout" and "body_read_timeout_s" in err["message"]
    assert not clients[DIFFUSION].requests
    status, _, raw = run(app, "/v1/completions", [GOOD[:10], GOOD[10:]])
    assert status == 200 and json.loads(raw)["choices"]  # a body in parts, in time, is served


# ---- item 10: no plain-text 500s, no exception names --------------------------------------------------
def test_a_client_that_disconnects_while_sending_the_body_gets_no_500_and_counts_as_aborted():
    app, clients = ingress_app()
    status, _, _ = run(app, "/v1/completions", [b'{"model": ', DISCONNECT])
    assert status < 500
    assert not clients[DIFFUSION].requests


def test_memory_error_while_handling_a_request_is_503_out_of_memory():
    app, _ = ingress_app()

    async def exhausted(*args: Any) -> None:
        raise MemoryError

    app_serving = app.routes[0].endpoint.__self__.serving
    app_serving.create = exhausted
    status, headers, raw = run(app, "/v1/completions", [GOOD])
    err = error(status, headers, raw, 503)
    assert err["code"] == "out_of_memory" and headers["retry-after"] == "7"


def test_an_unexpected_exception_is_a_500_in_the_error_shape_without_its_class_name():
    app, _ = ingress_app()
    ingress = app.routes[0].endpoint.__self__

    async def bug(*args: Any) -> None:
        raise RuntimeError("RayTaskError(ValueError): secret detail")

    def list_bug() -> None:
        raise KeyError("secret detail")

    ingress.serving.create = bug
    ingress.serving.list_models = list_bug
    for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models")):
        status, headers, raw = run(app, path, [GOOD], method=method)
        err = error(status, headers, raw, 500)
        assert err["code"] == "internal_error"
        assert "Error" not in err["message"] and "secret" not in err["message"], err
    assert errors(ingress.serving, "internal_error") == 1  # the completion; /v1/models is not a request


@pytest.mark.parametrize("failure", [ValueError("a bug in the replica call"), object()])
def test_an_unexpected_failure_mid_stream_ends_with_an_error_event_and_done(failure):
    """A bug where the replica's chunks are read, or where an event is built from one (``object()``
    is no chunk): an ``internal_error`` event and ``[DONE]``, never a cut connection."""
    app, clients = ingress_app([STORY[0], failure])
    status, _, raw = run(app, "/v1/completions", [json.dumps({**json.loads(GOOD), "stream": True}).encode()])
    out = sse_events(raw)
    assert status == 200 and out[0]["choices"][0]["text"] == "In the "
    assert out[1]["error"]["code"] == "internal_error" and "Error" not in out[1]["error"]["message"]
    assert out[2] == "[DONE]" and len(out) == 3
    assert clients[DIFFUSION].calls[0].cancelled


# ---- probes and the API key ----------------------------------------------------------------------
def test_ready_and_metrics_need_the_key_when_one_is_set_unless_probes_are_open():
    app, _ = ingress_app(api_key="sekrit")
    for path in ("/ready", "/metrics"):
        status, headers, raw = run(app, path, [], method="GET")
        assert error(status, headers, raw, 401)["code"] == "invalid_api_key"
        status, _, _ = run(app, path, [], method="GET", headers={"authorization": "Bearer sekrit"})
        assert status == 200
    assert run(app, "/health", [], method="GET")[0] == 200
    app, _ = ingress_app(api_key="sekrit", open_probes=True)
    assert [run(app, path, [], method="GET")[0] for path in ("/ready", "/metrics", "/health")] == [200, 200, 200]


# ---- item 7: /health is liveness, /ready readiness --------------------------------------------------
def test_health_answers_without_asking_any_replica_and_ready_asks_every_model():
    app, clients = ingress_app()

    async def never(timeout_s: float) -> str:
        raise AssertionError("/health must not call a replica")

    for client in clients.values():
        client.check_ready = never
    status, _, raw = run(app, "/health", [], method="GET")
    assert status == 200 and json.loads(raw) == {"status": "ok"}

    app, clients = ingress_app()
    status, _, raw = run(app, "/ready", [], method="GET")
    assert status == 200 and json.loads(raw)["status"] == "ok"
    clients[DIFFUSION].ready = "overloaded"
    status, headers, raw = run(app, "/ready", [], method="GET")
    assert status == 503 and headers["retry-after"] == "7"
    assert json.loads(raw)["models"][DIFFUSION] == "overloaded"


# ---- the exposure check, where Serve certainly runs -------------------------------------------------
class _Handle:
    def options(self, **_: Any) -> "_Handle":
        return self


def test_the_ingress_refuses_to_start_keyless_on_proxies_beyond_loopback(monkeypatch):
    """An app built before Serve ran (the import-time default app) is checked again when its ingress starts."""
    from dfast_serve.serve import ingress as ingress_module
    from tests.serve.ingress_asgi import IngressClass

    monkeypatch.setattr(ingress_module, "proxy_host", lambda: "0.0.0.0")
    config = {"models": [{"name": DIFFUSION, "engine": "diffusion"}]}
    with pytest.raises(ValueError, match="listen on 0.0.0.0 .* no API key"):
        IngressClass(config, {DIFFUSION: _Handle()}, {DIFFUSION: DiffusionOptions()})
    IngressClass({**config, "api_key": "sekrit"}, {DIFFUSION: _Handle()}, {DIFFUSION: DiffusionOptions()})
    monkeypatch.setattr(ingress_module, "proxy_host", lambda: "127.0.0.1")
    IngressClass(config, {DIFFUSION: _Handle()}, {DIFFUSION: DiffusionOptions()})


# ---- Host check (DNS rebinding) -----------------------------------------------------------------------
def test_the_router_refuses_a_foreign_host_before_any_route_and_in_the_error_shape():
    app, clients = ingress_app()
    status, headers, raw = run(app, "/v1/models", [], method="GET", host="evil.example:8000")
    assert error(status, headers, raw, 403)["code"] == "host_not_allowed"
    status, headers, raw = run(app, "/v1/completions", [b'{"model": "tiny-mdlm", "prompt": "x"}'], host="evil.example")
    assert error(status, headers, raw, 403)["code"] == "host_not_allowed"
    assert not any(c.calls for c in clients.values())  # nothing reached a replica
    assert run(app, "/v1/models", [], method="GET", host="localhost:8000")[0] == 200
    app, _ = ingress_app(api_key="sekrit")
    assert run(app, "/v1/models", [], method="GET", host="evil.example",
               headers={"authorization": "Bearer sekrit"})[0] == 200
