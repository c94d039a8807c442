"""Hostile input, disconnects and metrics against the main app (`serve run serve_config.yaml`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.sse import assert_error_shape, post_stream
from tests.serve.helpers import AR, DIFFUSION, PROMPT

JSON = {"content-type": "application/json"}
GOOD = {"model": DIFFUSION, "prompt": PROMPT, "max_tokens": 8}
GOOD_CHAT = {"model": DIFFUSION, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


@dataclass
class Case:
    name: str
    status: int
    body: Any = None  # a dict is sent as JSON; bytes (or a generator of bytes) as they are
    param: str | None = None
    code: str | None = None
    path: str = "/v1/completions"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def _with(**changes: Any) -> dict:
    return {**GOOD, **changes}


def _chat(**changes: Any) -> dict:
    return {**GOOD_CHAT, **changes}


def _nested(depth: int) -> dict:
    inner: Any = 1
    for _ in range(depth):
        inner = {"a": inner}
    return _with(dfast=inner)


def _chunked(total: int):
    part = b" " * 65536
    for _ in range(total // len(part) + 1):
        yield part


CASES = [
    Case("invalid json", 400, b"{not json", code="invalid_json"),
    Case("empty body", 400, b"", code="invalid_json"),
    Case("body is an array", 400, b"[1, 2]", code="invalid_type"),
    Case("body is a string", 400, b'"hello"', code="invalid_type"),
    Case("invalid utf-8", 400, b'{"model": "tiny-mdlm", "prompt": "\xff\xfe"}', code="invalid_json"),
    Case("unpaired surrogate in prompt", 400, b'{"model": "tiny-mdlm", "prompt": "a\\ud800b"}', param="prompt"),
    Case("NaN temperature", 400, b'{"model": "tiny-mdlm", "prompt": "x", "temperature": NaN}', code="invalid_json"),
    Case("Infinity max_tokens", 400, b'{"model": "tiny-mdlm", "prompt": "x", "max_tokens": Infinity}',
         code="invalid_json"),
    Case("100k nested arrays", 400, b"[" * 100_000 + b"]" * 100_000, code="invalid_json"),
    Case("nested objects in dfast", 400, _nested(40), code="invalid_json"),
    Case("repeated max_tokens", 400, b'{"model": "tiny-mdlm", "prompt": "x", "max_tokens": 8, "max_tokens": 1000}',
         param="max_tokens", code="invalid_json"),
    Case("1 MB: a 500k-character key over a 250k-item list", 400,
         b'{"' + b"k" * 500_000 + b'": [' + b"0," * 249_000 + b"0]}", code="invalid_json"),
    Case("2 MB body", 413, _with(prompt="x" * 2_000_000), code="request_too_large"),
    Case("2 MB chunked body", 413, _chunked(2_000_000), code="request_too_large"),
    Case("content type text/plain", 415, json.dumps(GOOD).encode(), headers={"content-type": "text/plain"},
         code="unsupported_media_type"),
    Case("no content type", 415, json.dumps(GOOD).encode(), headers={}, code="unsupported_media_type"),
    Case("missing model", 400, {"prompt": PROMPT}, param="model", code="missing_required_parameter"),
    Case("missing prompt", 400, {"model": DIFFUSION}, param="prompt", code="missing_required_parameter"),
    Case("missing messages", 400, {"model": DIFFUSION}, param="messages", path="/v1/chat/completions",
         code="missing_required_parameter"),
    Case("model is a number", 400, _with(model=7), param="model"),
    Case("empty model", 400, _with(model=""), param="model"),
    Case("unknown model", 404, _with(model="gpt-9"), param="model", code="model_not_found"),
    Case("max_tokens 0", 400, _with(max_tokens=0), param="max_tokens"),
    Case("max_tokens negative", 400, _with(max_tokens=-5), param="max_tokens"),
    Case("max_tokens enormous", 400, _with(max_tokens=10**30), param="max_tokens"),
    Case("max_tokens a string", 400, _with(max_tokens="12"), param="max_tokens"),
    Case("max_tokens a float", 400, _with(max_tokens=1.5), param="max_tokens"),
    Case("max_tokens a boolean", 400, _with(max_tokens=True), param="max_tokens"),
    Case("max_tokens over the context", 400, _with(max_tokens=5000), param="max_tokens",
         code="context_length_exceeded"),
    Case("prompt over the context", 400, _with(prompt="And God said " * 800), param="prompt",
         code="context_length_exceeded"),
    Case("AR prompt over the context", 400, _with(model=AR, prompt="And God said " * 3000), param="prompt",
         code="context_length_exceeded"),
    Case("empty prompt", 400, _with(prompt=""), param="prompt"),
    Case("two prompts", 400, _with(prompt=["a", "b"]), param="prompt"),
    Case("token-id prompt", 400, _with(prompt=[1, 2, 3]), param="prompt"),
    Case("temperature negative", 400, _with(temperature=-1), param="temperature"),
    Case("temperature 3", 400, _with(temperature=3), param="temperature"),
    Case("temperature a string", 400, _with(temperature="hot"), param="temperature"),
    Case("top_p 0", 400, _with(top_p=0), param="top_p"),
    Case("top_p 1.5", 400, _with(top_p=1.5), param="top_p"),
    Case("top_k -2", 400, _with(top_k=-2), param="top_k"),
    Case("n 2", 400, _with(n=2), param="n"),
    Case("seed 2**64", 400, _with(seed=2**64), param="seed"),
    Case("five stop sequences", 400, _with(stop=["a", "b", "c", "d", "e"]), param="stop"),
    Case("stream a string", 400, _with(stream="yes"), param="stream"),
    Case("stream_options without stream", 400, _with(stream_options={"include_usage": True}),
         param="stream_options"),
    Case("echo", 400, _with(echo=True), param="echo"),
    Case("logprobs", 400, _with(logprobs=5), param="logprobs"),
    Case("presence_penalty", 400, _with(presence_penalty=0.5), param="presence_penalty"),
    Case("unknown field", 400, _with(best_of=3), param="best_of"),
    Case("unknown dfast option", 400, _with(dfast={"turbo": True}), param="dfast.turbo"),
    Case("dfast option out of range", 400, _with(dfast={"steps": 10**9}), param="dfast.steps"),
    Case("dfast option wrong type", 400, _with(dfast={"ultra_fast": "on"}), param="dfast.ultra_fast"),
    Case("dfast not an object", 400, _with(dfast=[1]), param="dfast"),
    Case("dfast on an AR model", 400, _with(model=AR, dfast={"steps": 4}), param="dfast"),
    Case("chat role unknown", 400, _chat(messages=[{"role": "robot", "content": "x"}]), param="messages[0].role",
         path="/v1/chat/completions"),
    Case("chat no messages", 400, _chat(messages=[]), param="messages", path="/v1/chat/completions"),
    Case("chat content a number", 400, _chat(messages=[{"role": "user", "content": 5}]),
         param="messages[0].content", path="/v1/chat/completions"),
    Case("native stream, unknown model", 404, _with(model="nope"), param="model", path="/v1/dfast/stream",
         code="model_not_found"),
    Case("native stream, bad option", 400, _with(dfast={"block_length": 0}), param="dfast.block_length",
         path="/v1/dfast/stream"),
    Case("GET on a POST route", 405, method="GET", code="method_not_allowed"),
    Case("trailing slash: no redirect", 404, GOOD, path="/v1/completions/", code="not_found",
         headers={**JSON, "host": "127.0.0.2:9"}),
    # DNS rebinding: a web page's own name, resolved to 127.0.0.1, reaching this keyless loopback server.
    Case("keyless server, a page's Host", 403, GOOD, code="host_not_allowed", headers={**JSON, "host": "evil.example"}),
    Case("keyless server, a name that starts like loopback", 403, GOOD, code="host_not_allowed",
         headers={**JSON, "host": "127.0.0.1.evil.example:8000"}),
    Case("unknown route", 404, GOOD, path="/v1/embeddings", code="not_found"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_gets_the_right_4xx_in_openai_shape(server, case: Case):
    kwargs: dict[str, Any] = {"headers": case.headers, "timeout": 60}
    if isinstance(case.body, dict):
        kwargs["data"] = json.dumps(case.body).encode()
    elif case.body is not None:
        kwargs["data"] = case.body
    response = requests.request(case.method, server.base_url + case.path, **kwargs)
    error = assert_error_shape(response, case.status, param=case.param)
    if case.code is not None:
        assert error["code"] == case.code, error


def test_server_still_serves_after_hostile_requests(server):
    assert len(CASES) >= 25
    events = post_stream(server.base_url + "/v1/completions", {**GOOD, "stream": True})
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert requests.get(server.base_url + "/ready", timeout=10).status_code == 200


# ---- property-based fuzz --------------------------------------------------------------------------
# Valid bodies (short generations only, so the test stays bounded), the same with one field made
# hostile, and arbitrary JSON. Hostile integers are tiny or huge, never a valid but slow value.
small_or_huge_ints = st.integers(-3, 3) | st.integers(min_value=10**7) | st.integers(max_value=-(10**7))
scalars = st.none() | st.booleans() | small_or_huge_ints | st.floats() | st.text(max_size=12)
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=6)
models = st.sampled_from([DIFFUSION, AR, "auto"])
valid_dfast = st.fixed_dictionaries({}, optional={
    "steps": st.integers(1, 24), "block_length": st.integers(1, 16),
    "remasking": st.sampled_from(["low_confidence", "random"]), "ultra_fast": st.booleans(),
    "ultra_fast_config": st.fixed_dictionaries({}, optional={
        "min_steps": st.integers(1, 8), "max_steps": st.integers(8, 24), "first_token_steps": st.integers(1, 4),
        "stream_confidence_threshold": st.floats(0, 1), "stream_every_n_tokens": st.integers(0, 8),
        "enable_early_stop": st.booleans(), "schedule": st.sampled_from(["uniform", "front_loaded"])}),
})
valid_fields = {
    "max_tokens": st.integers(1, 12), "temperature": st.floats(0, 2), "top_k": st.integers(-1, 50),
    "top_p": st.floats(0, 1, exclude_min=True), "seed": st.integers(-(2**63), 2**63 - 1),
    "stop": st.text(min_size=1, max_size=4) | st.lists(st.text(min_size=1, max_size=4), max_size=4),
    "stream": st.booleans(), "n": st.just(1), "user": st.text(max_size=8), "dfast": valid_dfast,
}
valid_messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant"]),
    "content": st.text(max_size=30) | st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                                      "text": st.text(max_size=10)}), max_size=2)}),
    min_size=1, max_size=3)
optional_fields = {k: v for k, v in valid_fields.items() if k != "max_tokens"}
completion_bodies = st.fixed_dictionaries(
    {"model": models, "prompt": st.text(min_size=1, max_size=40), "max_tokens": valid_fields["max_tokens"]},
    optional=optional_fields)
chat_bodies = st.fixed_dictionaries(
    {"model": models, "messages": valid_messages, "max_tokens": valid_fields["max_tokens"]},
    optional={**optional_fields, "max_completion_tokens": st.integers(1, 12)})
FIELDS = sorted({*valid_fields, "model", "prompt", "messages", "max_completion_tokens", "stream_options",
                 "echo", "logprobs", "presence_penalty", "unknown_field"})


def one_field_hostile(bodies: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    return st.tuples(bodies, st.sampled_from(FIELDS), any_json).map(lambda t: {**t[0], t[1]: t[2]})


requests_to_send = st.one_of(
    st.tuples(st.sampled_from(["/v1/completions", "/v1/dfast/stream"]),
              completion_bodies | one_field_hostile(completion_bodies)),
    st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/dfast/stream"]),
              chat_bodies | one_field_hostile(chat_bodies)),
    st.tuples(st.sampled_from(["/v1/completions", "/v1/chat/completions"]), any_json),
)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(request=requests_to_send)
def test_fuzzed_requests_never_get_a_5xx(server, request):
    path, body = request
    data = json.dumps(body, allow_nan=True).encode()  # NaN/Infinity from st.floats() must be refused too
    with requests.post(server.base_url + path, data=data, headers=JSON, stream=True, timeout=60) as response:
        event(f"HTTP {response.status_code}")  # --hypothesis-show-statistics shows the mix
        assert response.status_code < 500, (response.status_code, response.text)
        if response.status_code != 200:
            assert_error_shape(response, response.status_code)
            return
        if not response.headers["content-type"].startswith("text/event-stream"):
            assert response.json()["choices"]
            return
        events = [line[len("data: "):] for line in response.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "[DONE]"
    assert not any("error" in json.loads(e) for e in events[:-1]), events


# ---- disconnects and metrics ----------------------------------------------------------------------
def _samples(server) -> dict[tuple[str, tuple], float]:
    text = requests.get(server.base_url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_tokens_and_time_to_first_token(server):
    before = _samples(server)
    usages = []
    for i in range(3):
        response = requests.post(server.base_url + "/v1/completions", json={**GOOD, "seed": i}, timeout=60)
        usages.append(response.json()["usage"])
    for i in range(2):
        events = post_stream(server.base_url + "/v1/completions",
                             {**GOOD, "seed": i, "stream": True, "stream_options": {"include_usage": True}})
        usages.append(events[-1]["usage"])
    requests.post(server.base_url + "/v1/completions", json=_with(temperature=9), timeout=10)
    after = _samples(server)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    model = {"model_name": DIFFUSION}
    assert delta("dfast:time_to_first_token_seconds_count", **model) == 5
    assert delta("dfast:e2e_request_latency_seconds_count", **model) == 5
    assert delta("dfast:request_queue_time_seconds_count", **model) == 5
    assert delta("dfast:forward_passes_per_request_count", **model) == 5
    assert sum(delta("dfast:request_success_total", finished_reason=r, **model) for r in ("stop", "length")) == 5
    assert delta("dfast:prompt_tokens_total", **model) == sum(u["prompt_tokens"] for u in usages)
    assert delta("dfast:generation_tokens_total", **model) == sum(u["completion_tokens"] for u in usages)
    assert delta("dfast:request_errors_total", model_name="", code="invalid_value") == 1
    assert _value(after, "dfast:num_requests_running", **model) == 0
    assert _value(after, "dfast:num_requests_waiting", **model) == 0
    assert delta("dfast:time_to_first_token_seconds_bucket", le="+Inf", **model) == 5
    names = {name for name, _ in after}
    for family in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
                   "request_queue_time_seconds", "tokens_per_forward_pass", "forward_passes_per_request"):
        assert f"dfast:{family}_count" in names
