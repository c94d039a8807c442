"""The OpenAI-compatible API end to end: real Ray cluster, `serve run`, real HTTP, real models."""

from __future__ import annotations

import requests

from dfast_serve.config import ReplicaConfig

from tests.serve.helpers import AR, DIFFUSION, MESSAGES, PROMPT
from tests.serve.sse import assert_error_shape, chat_text, completion_text, post_stream



def test_models_lists_both_engines(server):
    data = requests.get(server.base_url + "/v1/models", timeout=10).json()
    assert data["object"] == "list"
    assert {(m["id"], m["engine"]) for m in data["data"]} == {(DIFFUSION, "diffusion"), (AR, "ar")}


def test_health_and_ready_are_ok_when_replicas_answer(server):
    response = requests.get(server.base_url + "/health", timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    response = requests.get(server.base_url + "/ready", timeout=10)
    assert response.status_code == 200 and response.json()["models"] == {DIFFUSION: "ok", AR: "ok"}


def _completion(server, model, stream, **extra):
    body = {"model": model, "prompt": PROMPT, "max_tokens": 24, "temperature": 0.8, "seed": 11, **extra}
    if stream:
        return post_stream(server.base_url + "/v1/completions", {**body, "stream": True})
    response = requests.post(server.base_url + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_streamed_completion_equals_non_streamed_for_both_engines(server):
    for model in (DIFFUSION, AR):
        events = _completion(server, model, stream=True)
        full = _completion(server, model, stream=False)
        assert full["object"] == "text_completion" and full["model"] == model
        assert all(e["object"] == "text_completion" for e in events)
        assert completion_text(events) == full["choices"][0]["text"] != ""
        assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])
        assert full["choices"][0]["finish_reason"] == events[-1]["choices"][0]["finish_reason"]
        assert full["usage"]["completion_tokens"] <= 24


def test_streamed_chat_equals_non_streamed_for_both_engines(server):
    for model in (DIFFUSION, AR):
        body = {"model": model, "messages": MESSAGES, "max_completion_tokens": 24, "temperature": 0, "seed": 1}
        events = post_stream(server.base_url + "/v1/chat/completions", {**body, "stream": True,
                                                                          "stream_options": {"include_usage": True}})
        full = requests.post(server.base_url + "/v1/chat/completions", json=body, timeout=120).json()
        assert full["object"] == "chat.completion"
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chat_text(events) == full["choices"][0]["message"]["content"] != ""
        usage_event = events[-1]
        assert usage_event["choices"] == [] and usage_event["usage"] == full["usage"]


def test_chat_uses_the_models_chat_template(server, tiny_mdlm):
    body = {"model": DIFFUSION, "messages": MESSAGES, "max_tokens": 8}
    full = requests.post(server.base_url + "/v1/chat/completions", json=body, timeout=120).json()
    assert full["usage"]["prompt_tokens"] == len(tiny_mdlm.encode_chat(MESSAGES))
    assert full["usage"]["prompt_tokens"] != len(tiny_mdlm.encode_prompt(MESSAGES[0]["content"]))


def test_first_diffusion_event_leaves_before_generation_finishes(server):
    events = _completion(server, DIFFUSION, stream=True, max_tokens=32)
    first, last = events[0], events[-1]
    assert first["choices"][0]["text"] != ""
    assert first["dfast"]["nfe"] == 1 and first["dfast"]["progress"] < 1.0
    assert last["dfast"]["nfe"] > first["dfast"]["nfe"]


def test_native_stream_sends_streaming_chunks(server):
    chunks = post_stream(server.base_url + "/v1/dfast/stream", {"model": DIFFUSION, "prompt": PROMPT, "max_tokens": 32})
    fields = {"new_text", "full_text", "new_tokens", "total_tokens", "target_tokens", "progress", "time_ms",
              "is_first", "is_final", "nfe", "finish_reason", "model"}
    assert all(fields <= set(c) for c in chunks)
    assert chunks[0]["is_first"] and chunks[0]["nfe"] == 1 and chunks[-1]["is_final"]
    assert chunks[-1]["full_text"] == "".join(c["new_text"] for c in chunks)
    assert [c["progress"] for c in chunks] == sorted(c["progress"] for c in chunks)


def test_request_extension_switches_ultra_fast_off(server):
    on = _completion(server, DIFFUSION, stream=True, max_tokens=32)
    off = _completion(server, DIFFUSION, stream=True, max_tokens=32, dfast={"ultra_fast": False})
    assert on[0]["dfast"]["nfe"] == 1  # the instant first token
    # Off, the standard path: one pass per answer token (steps = max_tokens, one 32-token block), so every
    # chunk before the last has decided exactly nfe of the 32 positions. (Whether its first chunk needs
    # more than one pass depends on where the first pass commits: not asserted.)
    steps = [(e["dfast"]["nfe"], e["dfast"]["progress"]) for e in off
             if "dfast" in e and e["choices"] and e["choices"][0]["finish_reason"] is None]
    assert steps and all(progress == nfe / 32 for nfe, progress in steps), steps


def test_auto_routes_short_outputs_to_ar_and_long_to_diffusion(server):
    short = requests.post(server.base_url + "/v1/completions", json={"model": "auto", "prompt": PROMPT, "max_tokens": 8},
                          timeout=60).json()
    long = requests.post(server.base_url + "/v1/completions", json={"model": "auto", "prompt": PROMPT, "max_tokens": 16},
                         timeout=60).json()
    assert short["model"] == AR and long["model"] == DIFFUSION


def test_unknown_model_is_404_in_openai_shape(server):
    response = requests.post(server.base_url + "/v1/completions", json={"model": "gpt-9", "prompt": "hi"}, timeout=10)
    error = assert_error_shape(response, 404, param="model")
    assert error["code"] == "model_not_found"


def test_malformed_body_is_400_in_openai_shape(server):
    response = requests.post(server.base_url + "/v1/completions", data=b"{not json",
                             headers={"content-type": "application/json"}, timeout=10)
    assert_error_shape(response, 400)
    response = requests.post(server.base_url + "/v1/completions", json={"model": DIFFUSION}, timeout=10)
    assert_error_shape(response, 400, param="prompt")


def test_invalid_diffusion_option_names_the_option(server):
    body = {"model": DIFFUSION, "prompt": PROMPT, "dfast": {"ultra_fast_config": {"min_steps": 40, "max_steps": 8}}}
    error = assert_error_shape(requests.post(server.base_url + "/v1/completions", json=body, timeout=10), 400)
    assert "min_steps" in error["message"] and error["param"].startswith("dfast")
    body = {"model": DIFFUSION, "prompt": PROMPT, "dfast": {"ultra_fast_config": {"stream_confidence_threshold": 1.5}}}
    error = assert_error_shape(requests.post(server.base_url + "/v1/completions", json=body, timeout=10), 400)
    assert error["param"] == "dfast.ultra_fast_config.stream_confidence_threshold"


def test_a_block_beyond_the_models_max_block_length_is_refused(server):
    cap = ReplicaConfig().max_block_length  # serve_config.yaml keeps the default
    body = {"model": DIFFUSION, "prompt": PROMPT, "max_tokens": cap + 8, "dfast": {"block_length": cap + 1}}
    error = assert_error_shape(requests.post(server.base_url + "/v1/completions", json=body, timeout=30), 400)
    assert error["param"] == "dfast.block_length" and str(cap) in error["message"]
    body["dfast"]["block_length"] = cap
    assert requests.post(server.base_url + "/v1/completions", json={**body, "max_tokens": 8}, timeout=120).status_code == 200
