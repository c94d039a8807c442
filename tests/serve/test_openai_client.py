"""The official openai client consumes our streams."""

from __future__ import annotations

import openai
import pytest

from tests.serve.helpers import AR, DIFFUSION, MESSAGES, PROMPT


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_openai_client_streams_completions_with_usage(server):
    client = _client(server)
    for model in (DIFFUSION, AR):
        stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0, stream=True,
                                           stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
        whole = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0)
        assert whole.choices[0].text == text


def test_openai_client_streams_chat(server):
    client = _client(server)
    for model in (DIFFUSION, AR):
        stream = client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=16,
                                                temperature=0, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
        assert text
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
        whole = client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=16, temperature=0)
        assert whole.choices[0].message.content == text
        assert whole.usage.completion_tokens == chunks[-1].usage.completion_tokens


def test_openai_client_raises_not_found_for_unknown_model(server):
    client = _client(server)
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="nope", prompt="x", max_tokens=4)
    # the openai client unwraps {"error": {...}} into .body and reads .code from it
    assert caught.value.code == "model_not_found"
    assert caught.value.body["param"] == "model"
