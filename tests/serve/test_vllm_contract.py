"""The exact requests ``vllm bench serve`` 0.32 sends, against the real app (Ray, HTTP, both models).

Bodies copied field for field from vLLM's ``benchmarks/lib/endpoint_request_func.py`` (openai and
openai-chat backends, ``--dataset-name random``: ``ignore_eos`` always) and the ``/tokenize`` /
``/detokenize`` probe of ``benchmarks/serve.py``; the stream is read the way vLLM reads it.
"""

from __future__ import annotations

import json

import pytest
import requests

MAX_TOKENS = 12
PROMPT = "In the beginning God created the heaven and the earth."


def vllm_read(response: requests.Response, chat: bool) -> tuple[str, int | None, int]:
    """vLLM's parsing: text from choices, completion_tokens from the usage chunk; number of text chunks."""
    text, output_tokens, chunks = "", None, 0
    for line in response.iter_lines(decode_unicode=True):
        if not line or line.startswith(":"):
            continue
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            continue
        payload = json.loads(data)
        if choices := payload.get("choices"):
            chunks += 1
            text += (choices[0]["delta"].get("content") if chat else choices[0].get("text")) or ""
        elif usage := payload.get("usage"):
            output_tokens = usage.get("completion_tokens")
    return text, output_tokens, chunks


@pytest.mark.parametrize("model", ["tiny-mdlm", "smollm2-135m"])
@pytest.mark.parametrize("backend", ["openai", "openai-chat"])
def test_vllm_bench_bodies_stream_exactly_max_tokens(server, model, backend):
    probe = requests.post(server.base_url + "/tokenize", json={"model": model, "prompt": PROMPT,
                                                               "add_special_tokens": False}, timeout=60)
    assert probe.status_code == 200, probe.text
    tokens = probe.json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    back = requests.post(server.base_url + "/detokenize", json={"model": model, "tokens": tokens}, timeout=60)
    assert back.status_code == 200 and back.json()["prompt"].strip() == PROMPT
    if backend == "openai":
        url, payload = "/v1/completions", {
            "model": model, "prompt": PROMPT, "repetition_penalty": 1.0, "max_tokens": MAX_TOKENS,
            "logprobs": None, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    else:
        url, payload = "/v1/chat/completions", {
            "model": model, "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
            "max_completion_tokens": MAX_TOKENS, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True}
    request_id = f"bench-{backend}-{model}-0"
    with requests.post(server.base_url + url, json=payload, headers={"x-request-id": request_id}, stream=True,
                       timeout=180) as response:
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == request_id
        text, output_tokens, chunks = vllm_read(response, backend == "openai-chat")
    assert chunks >= 1 and text
    assert output_tokens == MAX_TOKENS  # ignore_eos: the whole length, never an early EOS


def test_model_cards_version_and_request_ids(server):
    cards = requests.get(server.base_url + "/v1/models", timeout=60).json()["data"]
    assert {c["id"] for c in cards} == {"tiny-mdlm", "smollm2-135m"}
    for card in cards:
        assert card["root"] and card["max_model_len"] > 0
        one = requests.get(server.base_url + "/v1/models/" + card["id"], timeout=60)
        assert one.status_code == 200 and one.json() == card
    missing = requests.get(server.base_url + "/v1/models/nope", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    version = requests.get(server.base_url + "/version", timeout=30)
    assert version.status_code == 200 and version.json()["version"]
    full = requests.post(server.base_url + "/v1/completions", headers={"x-request-id": "mine-1"}, timeout=120,
                         json={"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 2})
    assert full.headers["x-request-id"] == "mine-1" and full.json()["id"] == "cmpl-mine-1"


def test_ignore_eos_overrides_an_early_eos_over_http(server):
    """The case where it matters: greedy tiny-mdlm answers "Say hi." in a few tokens, then EOS."""
    body = {"model": "tiny-mdlm", "messages": [{"role": "user", "content": "Say hi."}], "temperature": 0,
            "max_completion_tokens": 24}
    plain = requests.post(server.base_url + "/v1/chat/completions", json=body, timeout=180).json()
    assert plain["choices"][0]["finish_reason"] == "stop" and plain["usage"]["completion_tokens"] < 24
    full = requests.post(server.base_url + "/v1/chat/completions", json={**body, "ignore_eos": True}, timeout=180).json()
    assert full["choices"][0]["finish_reason"] == "length" and full["usage"]["completion_tokens"] == 24
