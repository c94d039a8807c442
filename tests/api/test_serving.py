"""The OpenAI serving logic alone (``api/serving.py``), in milliseconds and without Ray.

The replica client here is a FAKE, standing in for one layer: it plays back scripted chunk deltas
and ``APIError``s the way ``serve/replica_client.py`` delivers them, so that every error the
serving class produces, and every relay, is checked in-process. What only Ray can show (the real
handle, backpressure, a replica dying, the proxy's own plain-text 503, disconnects reaching the
engine) is proven by the real-Ray tests in ``tests/serve`` (``test_api``, ``test_limits``,
``test_hardening``); the Ray error mapping itself is ``tests/serve/test_replica_client.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from dfast_serve.api.errors import APIError
from dfast_serve.api.serving import OpenAIServing
from tests.api.fakes import AR, DIFFUSION, HANG, STORY, body, create, error_of, events, errors, make


# ---- relays -----------------------------------------------------------------------------------------
def test_streamed_completion_relays_each_delta_then_usage_then_done():
    serving, clients = make()
    out = events(create(serving, body(stream=True, stream_options={"include_usage": True})))
    assert [e["choices"][0]["text"] for e in out[:3]] == ["In the ", "beginning", " was"]
    assert [e["choices"][0]["finish_reason"] for e in out[:3]] == [None, None, "length"]
    assert [e["dfast"]["nfe"] for e in out[:3]] == [1, 2, 3]
    assert out[3]["choices"] == [] and out[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4,
                                                           "total_tokens": 7}
    assert out[4] == "[DONE]" and len(out) == 5
    assert clients[DIFFUSION].calls[0].cancelled  # close() ran at the end: cleanup is unconditional


def test_chat_stream_sends_the_role_once_and_a_collected_chat_joins_the_deltas():
    serving, _ = make()
    chat = json.dumps({"model": DIFFUSION, "messages": [{"role": "user", "content": "Hi"}], "stream": True}).encode()
    out = events(create(serving, chat, "chat"))
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": "In the "}
    assert out[1]["choices"][0]["delta"] == {"content": "beginning"}
    full = create(serving, chat.replace(b'"stream": true', b'"stream": false'), "chat")
    assert full["object"] == "chat.completion" and full["choices"][0]["message"]["content"] == "In the beginning was"
    assert full["usage"]["completion_tokens"] == 4 and full["dfast"] == {"nfe": 3}


def test_native_stream_rebuilds_full_text_from_the_deltas():
    serving, _ = make()
    out = events(create(serving, body(), "native"))
    assert [e["full_text"] for e in out[:3]] == ["In the ", "In the beginning", "In the beginning was"]
    assert {"model", "new_text", "new_tokens", "total_tokens", "target_tokens", "progress", "time_ms", "is_first",
            "is_final", "nfe", "finish_reason", "prompt_tokens"} <= set(out[0])
    assert out[0]["is_first"] and out[2]["is_final"] and out[-1] == "[DONE]"


def test_native_full_text_is_repeated_up_to_its_bound_and_always_whole_in_the_final_event():
    serving, _ = make(native_full_text_chars=len("In the ") + len("In the beginning"))
    out = events(create(serving, body(), "native"))
    assert [e["full_text"] for e in out[:3]] == ["In the ", "In the beginning", "In the beginning was"]
    serving, _ = make(native_full_text_chars=len("In the "))
    out = events(create(serving, body(), "native"))
    assert [e["full_text"] for e in out[:3]] == ["In the ", None, "In the beginning was"]  # the last is final
    assert "".join(e["new_text"] for e in out[:3]) == out[2]["full_text"]


def test_finished_requests_are_counted_by_the_metrics_hooks():
    serving, _ = make()
    create(serving, body())
    events(create(serving, body(stream=True)))
    sample = serving.metrics.registry.get_sample_value
    assert sample("dfast:request_success_total", {"model_name": DIFFUSION, "finished_reason": "length"}) == 2
    assert sample("dfast:time_to_first_token_seconds_count", {"model_name": DIFFUSION}) == 2
    assert sample("dfast:num_requests_running", {"model_name": DIFFUSION}) == 0


# ---- planning ---------------------------------------------------------------------------------------
def test_plan_layers_the_requests_dfast_overrides_on_the_resolved_options():
    serving, clients = make()
    create(serving, body(dfast={"ultra_fast_config": {"min_steps": 2}}, temperature=0.5, seed=3))
    create(serving, body())
    overridden, plain = clients[DIFFUSION].requests
    assert overridden.diffusion.ultra_fast_config.min_steps == 2
    assert overridden.diffusion.block_length == 16  # the model's serve_config value stays under the override
    assert plain.diffusion == serving.diffusion[DIFFUSION][0]
    assert overridden.params.max_tokens == 8 and overridden.params.temperature == 0.5 and overridden.params.seed == 3
    assert overridden.prompt == "In the beginning" and overridden.messages is None
    assert overridden.request_id.startswith("cmpl-") and overridden.arrived > 0


def test_auto_and_ar_requests_reach_the_ar_client_without_diffusion_options():
    serving, clients = make()
    create(serving, body(model="auto", max_tokens=4))
    chat = json.dumps({"model": AR, "messages": [{"role": "user", "content": "Hi"}]}).encode()
    create(serving, chat, "chat")
    short, chatted = clients[AR].requests
    assert short.diffusion is None and chatted.messages == [{"role": "user", "content": "Hi"}]
    assert chatted.params.max_tokens == serving.config.default_max_tokens
    assert not clients[DIFFUSION].requests


# ---- every error the serving class produces ---------------------------------------------------------
@pytest.mark.parametrize("raw,status,param,code", [
    (b"{not json", 400, None, "invalid_json"),
    (body(temperature=9), 400, "temperature", "invalid_value"),
    (body(model="gpt-9"), 404, "model", "model_not_found"),
    (body(model=AR, dfast={"steps": 4}), 400, "dfast", "invalid_value"),
    (body(dfast={"ultra_fast_config": {"stream_confidence_threshold": 1.5}}), 400,
     "dfast.ultra_fast_config.stream_confidence_threshold", "invalid_value"),
    (body(dfast={"no_such_option": 1}), 400, "dfast.no_such_option", "invalid_value"),
])
def test_bad_requests_are_refused_before_any_replica_is_called(raw, status, param, code):
    serving, clients = make()
    err = error_of(serving, raw)
    assert (err.status, err.param, err.code) == (status, param, code)
    assert not clients[DIFFUSION].requests and not clients[AR].requests
    assert errors(serving, code) == 1


def _option_bounds():
    """(dfast path, beyond the upper bound, beyond the lower bound) of every numeric diffusion option
    (the exact ranges are pinned in tests/wire/test_options.py)."""
    from dfast_serve.wire.options import DiffusionOptions, UltraFastConfig

    out = []
    for prefix, model in (((), DiffusionOptions), (("ultra_fast_config",), UltraFastConfig)):
        for name, info in model.model_fields.items():
            le = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
            ge = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
            if le is not None:
                step = 1 if isinstance(le, int) else 0.01
                out.append(((*prefix, name), le + step, ge - step))
    return out


@pytest.mark.parametrize("path,above,below", _option_bounds(), ids=lambda v: ".".join(v) if isinstance(v, tuple) else None)
def test_a_dfast_option_out_of_range_is_a_400_naming_it(path, above, below):
    serving, clients = make()
    for value in (above, below):
        other = {"max_steps": 4096} if path[-1] == "min_steps" else {}
        override = {path[-1]: value, **other}
        if len(path) == 2:
            override = {path[0]: override}
        err = error_of(serving, body(dfast=override))
        assert (err.status, err.param, err.code) == (400, "dfast." + ".".join(path), "invalid_value"), value
    assert not clients[DIFFUSION].requests


def test_a_refusal_or_overload_from_the_replica_is_the_http_error_and_the_call_is_cancelled():
    refusal = APIError(400, "prompt is 9000 tokens", param="prompt", code="context_length_exceeded")
    overload = APIError(503, "at capacity", "server_overloaded", None, "overloaded", retry_after_s=7)
    for first in (refusal, overload):
        serving, clients = make([first])
        assert error_of(serving, body(stream=True)) is first
        assert clients[DIFFUSION].calls[0].cancelled
        assert errors(serving, first.code) == 1


def test_no_first_chunk_within_the_queue_timeout_is_503_queue_timeout_with_retry_after():
    serving, clients = make([HANG], queue_timeout_s=0.05)
    err = error_of(serving, body())
    assert (err.status, err.code, err.retry_after_s) == (503, "queue_timeout", 7)
    assert clients[DIFFUSION].calls[0].cancelled


def test_no_first_chunk_within_the_request_timeout_is_504():
    serving, clients = make([HANG], request_timeout_s=0.05, queue_timeout_s=30)
    err = error_of(serving, body(stream=True))
    assert (err.status, err.code, err.type) == (504, "timeout", "timeout_error")
    assert clients[DIFFUSION].calls[0].cancelled


def test_a_stream_that_ends_without_output_is_500():
    serving, _ = make([])
    err = error_of(serving, body())
    assert (err.status, err.code) == (500, "internal_error")


def test_a_failure_mid_stream_is_an_error_event_then_done_and_a_json_error_when_collected():
    failed = APIError(503, "Generation failed: ActorDiedError", "server_error", None, "replica_failed", 7)
    serving, clients = make([STORY[0], failed])
    out = events(create(serving, body(stream=True)))
    assert out[0]["choices"][0]["text"] == "In the "
    assert out[1] == failed.body() and out[2] == "[DONE]" and len(out) == 3
    native = events(create(serving, body(), "native"))
    assert native[1] == failed.body() and native[2] == "[DONE]"
    assert error_of(serving, body()) is failed
    assert errors(serving, "replica_failed") == 3
    assert all(call.cancelled for call in clients[DIFFUSION].calls)


def test_the_request_timeout_ends_a_running_stream_with_a_timeout_event():
    serving, clients = make([STORY[0], HANG], request_timeout_s=0.2)
    out = events(create(serving, body(stream=True)))
    assert out[1]["error"]["code"] == "timeout" and out[2] == "[DONE]"
    assert clients[DIFFUSION].calls[0].cancelled
    assert error_of(serving, body()).status == 504


def test_a_client_that_leaves_before_reading_cancels_the_generation_and_counts_an_abort():
    serving, clients = make()
    stream = create(serving, body(stream=True))
    stream.close()  # what the ingress's background task does when the client is gone
    assert clients[DIFFUSION].calls[0].cancelled
    sample = serving.metrics.registry.get_sample_value
    assert sample("dfast:request_success_total", {"model_name": DIFFUSION, "finished_reason": "abort"}) == 1


def _sample(serving: OpenAIServing, name: str, **labels: str) -> float:
    return serving.metrics.registry.get_sample_value(name, {"model_name": DIFFUSION, **labels}) or 0.0


async def _until(condition: Any, what: str, deadline_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("stream", [True, False])
def test_clients_that_leave_while_queued_leave_no_waiting_gauge_and_count_aborts(stream):
    """Ten requests wait for their first chunk, then their clients leave (the ingress task is
    cancelled): the waiting gauge returns to 0, each counts one abort and its replica call is cancelled."""
    serving, clients = make([HANG])
    n = 10

    async def scenario() -> None:
        tasks = [asyncio.create_task(serving.create("completion", body(stream=stream), serving.metrics.request()))
                 for _ in range(n)]
        await _until(lambda: _sample(serving, "dfast:num_requests_waiting") == n, "the requests never queued")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert _sample(serving, "dfast:num_requests_waiting") == 0
    assert _sample(serving, "dfast:request_success_total", finished_reason="abort") == n
    assert all(call.cancelled for call in clients[DIFFUSION].calls)


@pytest.mark.parametrize("kind,raw,param", [
    ("completion", body(prompt="x" * 1025), "prompt"),
    ("completion", body(prompt=["x" * 1025]), "prompt"),
    ("chat", json.dumps({"model": DIFFUSION, "messages": [{"role": "system", "content": "x" * 600},
                                                          {"role": "user", "content": [{"type": "text", "text": "y" * 600}]}]}).encode(),
     "messages"),
])
def test_a_prompt_over_max_prompt_chars_is_refused_before_any_replica_tokenizes_it(kind, raw, param):
    serving, clients = make(max_prompt_chars=1024)
    err = error_of(serving, raw, kind)
    assert (err.status, err.param, err.code) == (400, param, "context_length_exceeded")
    assert "max_prompt_chars" in err.message
    assert not clients[DIFFUSION].requests
    assert create(serving, body(prompt="x" * 1024))["choices"]  # the limit itself is allowed


# ---- models and health ------------------------------------------------------------------------------
def test_models_and_health():
    serving, clients = make()
    assert [(m["id"], m["engine"]) for m in asyncio.run(serving.list_models())["data"]] == [(DIFFUSION, "diffusion"), (AR, "ar")]
    assert asyncio.run(serving.ready()) == (True, {"status": "ok", "models": {DIFFUSION: "ok", AR: "ok"}})
    clients[AR].ready = "overloaded"
    ok, report = asyncio.run(serving.ready())
    assert not ok and report == {"status": "unavailable", "models": {DIFFUSION: "ok", AR: "overloaded"}}


def test_the_serving_layer_imports_no_ray():
    code = "import sys, dfast_serve.api.serving; assert not any(m.split('.')[0] == 'ray' for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
