"""Strict JSON and strict request validation (no Ray): the rules the HTTP tests rely on, at their edges."""

from __future__ import annotations

import json

import pytest

from benchmarks.serving.body_memory import parse_and_validate, peak_bytes, worst_case_bodies
from dfast_serve.api.body import MAX_JSON_DEPTH, MAX_OBJECT_KEYS, parse_json, validate
from dfast_serve.api.errors import APIError
from dfast_serve.api.protocol import ChatCompletionRequest, CompletionRequest
from dfast_serve.config import ServerConfig, load_server_config


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


# --- memory and time stay proportional to the body ---------------------------------------------

MAX_BODY = ServerConfig.model_fields["max_body_bytes"].default
PEAK_PER_BODY_BYTE = 48  # any body: Python spends ~44 bytes per byte of the densest JSON ("[[[]]]")
PEAK_PER_BODY_BYTE_AT_MAX = 10  # a max-size body: the item limit refuses the dense ones before parsing


@pytest.mark.parametrize("shape", sorted(worst_case_bodies(1024)))
def test_worst_case_bodies_cost_memory_proportional_to_their_size(shape):
    # Ascending sizes, one test: a checker that is not proportional fails at the small size
    # instead of exhausting the machine at the large one.
    for size in (10_000, 100_000, MAX_BODY):
        raw = worst_case_bodies(size)[shape]
        peak, outcome = peak_bytes(lambda: parse_and_validate(raw))
        bound = PEAK_PER_BODY_BYTE_AT_MAX if size == MAX_BODY else PEAK_PER_BODY_BYTE
        assert peak <= bound * len(raw), (shape, size, peak, outcome)
        assert outcome == "accepted" or outcome.startswith("400 "), outcome


def test_the_issue_body_is_refused_before_parsing():
    raw = worst_case_bodies(MAX_BODY)["long_key_over_list"]  # one 500k-character key over a 250k-item list
    error = _error(parse_json, raw)
    assert error.code == "invalid_json" and "more than 50000 JSON items" in error.message


def _items(n: int, value: bytes = b'"a,[{"') -> bytes:
    """A body of exactly ``n`` items: ``{``, the key, ``[``, then (n - 2) / 2 string values and their commas."""
    assert n >= 4 and n % 2 == 0
    return b'{"x":[' + b",".join([value] * ((n - 2) // 2)) + b"]}"


@pytest.mark.parametrize("n", [10, 302, 1002])
def test_item_limit_counts_strings_commas_and_brackets_but_nothing_inside_strings(n):
    raw = _items(n, b'"\\",[{,\\\\"')  # commas, brackets and escaped quotes inside the strings
    assert parse_json(raw, max_items=n)["x"][0] == '",[{,\\'
    assert _error(parse_json, raw, n - 1).code == "invalid_json"


def test_a_long_chat_fits_in_the_item_limit():
    parts = [{"type": "text", "text": "a, [b] {c}"}] * 4
    body = {"model": "m", "messages": [{"role": "user", "content": parts}] * 1024}
    assert len(validate(ChatCompletionRequest, parse_json(json.dumps(body).encode())).messages) == 1024


def test_an_unterminated_string_is_invalid_json_not_an_item_count():
    raw = b'{"a' + b'\\"' * 100_000
    error = _error(parse_json, raw, 10)
    assert error.code == "invalid_json" and "not valid JSON" in error.message


def test_numbers_beyond_a_double_are_refused():
    assert _error(parse_json, b'{"temperature": 1e999}').code == "invalid_json"
    assert parse_json(b'{"temperature": 1e308}') == {"temperature": 1e308}


# --- repeated keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, param", [
    (b'{"max_tokens": 8, "model": "m", "max_tokens": 1000}', "max_tokens"),
    (b'{"dfast": {"steps": 8, "block_length": 8, "steps": 9}}', "dfast.steps"),
    (b'{"messages": [{"role": "user"}, {"role": "user", "content": "a", "role": "system"}]}', "messages[1].role"),
    (b'{"a": [[[{"k": 1, "k": 1}]]]}', "a[0][0][0].k"),
])
def test_repeated_keys_are_refused_at_any_depth(raw, param):
    error = _error(parse_json, raw)
    assert (error.code, error.param) == ("invalid_json", param)
    assert "more than once" in error.message


def test_equal_keys_in_different_objects_are_fine():
    body = parse_json(b'{"a": {"k": 1}, "b": {"k": 2}, "c": [{"k": 3}, {"k": 4}]}')
    assert body["c"][1]["k"] == 4


def test_objects_of_more_than_64_keys_are_refused_where_they_are():
    def body(n: int) -> bytes:
        return json.dumps({"dfast": {f"k{i}": i for i in range(n)}}).encode()

    assert len(parse_json(body(MAX_OBJECT_KEYS))["dfast"]) == MAX_OBJECT_KEYS
    error = _error(parse_json, body(MAX_OBJECT_KEYS + 1))
    assert (error.code, error.param) == ("invalid_json", "dfast") and "more than 64 keys" in error.message
