"""Strict JSON and strict request validation (no Ray): the rules the HTTP tests rely on, at their edges."""

from __future__ import annotations

import json

import pytest

from dfast_serve.api.body import MAX_JSON_DEPTH, parse_json, validate
from dfast_serve.api.errors import APIError
from dfast_serve.api.protocol import ChatCompletionRequest, CompletionRequest
from dfast_serve.config import load_server_config


def _error(call, *args) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args)
    assert info.value.status == 400
    return info.value


def _nested(depth: int) -> bytes:
    """A body whose deepest container is ``depth`` levels down (the body itself is level 1)."""
    inner: object = 1
    for _ in range(depth):
        inner = {"a": inner}
    return json.dumps(inner).encode()


def test_nesting_up_to_the_limit_is_accepted_and_one_more_level_is_not():
    assert parse_json(_nested(MAX_JSON_DEPTH))
    error = _error(parse_json, _nested(MAX_JSON_DEPTH + 1))
    assert error.code == "invalid_json" and error.param == ".".join(["a"] * MAX_JSON_DEPTH)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_standard_json_constants_are_refused(constant):
    assert _error(parse_json, b'{"temperature": ' + constant + b"}").code == "invalid_json"


def test_unpaired_surrogates_are_refused_in_keys_and_values():
    assert _error(parse_json, b'{"stop": ["ok", "\\udc00"]}').param == "stop[1]"
    assert _error(parse_json, b'{"dfast": {"\\ud800": 1}}').param == "dfast.\ud800"
    assert parse_json('{"prompt": "\\ud83d\\ude00 \u00e9"}'.encode()) == {"prompt": "\U0001f600 \u00e9"}


@pytest.mark.parametrize("value", ["5", 5.0, True])
def test_integers_are_strict(value):
    error = _error(validate, CompletionRequest, {"model": "m", "prompt": "p", "max_tokens": value})
    assert error.param == "max_tokens"


def test_integers_are_accepted_as_floats_and_errors_name_nested_fields():
    assert validate(CompletionRequest, {"model": "m", "prompt": "p", "temperature": 1}).temperature == 1.0
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}
    assert _error(validate, ChatCompletionRequest, body).param == "messages[0].content"
    error = _error(validate, CompletionRequest, {"model": "m", "prompt": "p", "stream_options": {}})
    assert error.param == "stream_options" and error.message == "stream_options: only allowed when stream is true"


def test_api_key_comes_from_the_file_first_then_the_environment():
    args = {"models": [{"name": "m", "engine": "ar"}]}
    assert load_server_config(args, environ={}).api_key is None
    assert load_server_config(args, environ={"DFASTLLM_API_KEY": "env"}).api_key == "env"
    assert load_server_config({**args, "api_key": "file"}, environ={"DFASTLLM_API_KEY": "env"}).api_key == "file"
