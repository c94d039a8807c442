"""``/tokenize`` reads a prompt with the model's tokenizer: it gets generation's bound on prompt size
(``max_prompt_chars``), checked before any tokenizer runs (fake replica clients, no Ray)."""

from __future__ import annotations

import asyncio
import json

import pytest

from dfast_serve.wire import APIError
from tests.api.fakes import AR, make


@pytest.mark.parametrize("field,body", [
    ("prompt", {"prompt": "x" * 1025}),
    ("messages", {"messages": [{"role": "user", "content": "x" * 600}, {"role": "user", "content": "y" * 425}]}),
])
def test_a_prompt_over_max_prompt_chars_is_refused_before_the_tokenizer(field, body):
    serving, clients = make(max_prompt_chars=1024)
    calls = []

    async def tokenize(*args, **kwargs):
        calls.append(args)
        return [1]

    clients[AR].tokenize = tokenize
    with pytest.raises(APIError) as refused:
        asyncio.run(serving.tokenize(json.dumps({"model": AR, **body}).encode()))
    assert (refused.value.status, refused.value.param, refused.value.code) == (400, field, "context_length_exceeded")
    assert calls == []
    fits = {"prompt": "x" * 1024} if field == "prompt" else {"messages": [{"role": "user", "content": "x" * 1024}]}
    assert asyncio.run(serving.tokenize(json.dumps({"model": AR, **fits}).encode()))["count"] == 1
