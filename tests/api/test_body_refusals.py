"""What a client reads when its body is refused (``api/body.py``): the exact message, ``param`` and
``code`` of each refusal, at the top level and nested, and what is let through unchanged."""

from __future__ import annotations

import json

import pytest

from dfast_serve.api.body import MAX_JSON_DEPTH, MAX_OBJECT_KEYS, parse_json, validate
from dfast_serve.api.errors import APIError
from dfast_serve.api.protocol import CompletionRequest
from dfast_serve.wire import DiffusionOptions


def refusal(raw: bytes, max_items: int | None = None) -> APIError:
    with pytest.raises(APIError) as info:
        parse_json(raw) if max_items is None else parse_json(raw, max_items)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_non_standard_constant_is_named(constant):
    err = refusal(b'{"temperature": ' + constant.encode() + b"}")
    assert (err.param, err.code) == (None, "invalid_json")
    assert err.message.startswith("The body is not valid JSON: ")
    assert f"{constant} is not valid JSON" in err.message


def test_a_number_beyond_a_double_is_named():
    err = refusal(b'{"temperature": 1e999}')
    assert err.message.startswith("The body is not valid JSON: 1e999 is out of the range of a double")
    assert parse_json(b'{"t": -2.5e-3, "u": 0.0}') == {"t": -2.5e-3, "u": 0.0}
    long = "1" * 400 + ".5"  # a double overflows; the message quotes its first 32 characters
    err = refusal(b'{"temperature": ' + long.encode() + b"}")
    assert err.message == f"The body is not valid JSON: {long[:32]} is out of the range of a double"


def test_invalid_utf8_and_invalid_json_and_non_objects():
    err = refusal(b'{"prompt": "\xff"}')
    assert (err.message, err.param, err.code) == ("The body is not valid UTF-8", None, "invalid_json")
    err = refusal(b'{"prompt": ')
    assert err.code == "invalid_json" and err.message.startswith("The body is not valid JSON: ")
    err = refusal(b"[1, 2]")
    assert (err.message, err.param, err.code) == ("The body must be a JSON object, not list", None, "invalid_type")
    err = refusal(b'"text"')
    assert err.message == "The body must be a JSON object, not str"


def test_a_repeated_key_is_named_with_its_path():
    err = refusal(b'{"dfast": {"steps": 1, "steps": 2}}')
    assert (err.param, err.code) == ("dfast.steps", "invalid_json")
    assert err.message == "dfast.steps appears more than once in its object"
    err = refusal(b'{"model": "a", "stop": "x", "n": 1, "stop": "y"}')
    assert (err.param, err.message) == ("stop", "stop appears more than once in its object")
    err = refusal(b'{"model": "a", "model": "b"}')
    assert err.message == "model appears more than once in its object" and err.param == "model"


def test_too_many_keys_is_named_where_it_is_and_at_the_top():
    err = refusal(json.dumps({f"k{i}": i for i in range(MAX_OBJECT_KEYS + 1)}).encode())
    assert (err.param, err.message) == (None, f"The body has more than {MAX_OBJECT_KEYS} keys")
    err = refusal(json.dumps({"a": [{f"k{i}": i for i in range(MAX_OBJECT_KEYS + 1)}]}).encode())
    assert (err.param, err.message) == ("a[0]", f"a[0] has more than {MAX_OBJECT_KEYS} keys")


def nested(depth: int, leaf: object = 1, key: str = "a") -> bytes:
    inner = leaf
    for _ in range(depth):
        inner = {key: inner}
    return json.dumps(inner).encode()


def test_depth_is_counted_in_objects_and_lists_alike():
    assert parse_json(nested(MAX_JSON_DEPTH))
    err = refusal(nested(MAX_JSON_DEPTH + 1))
    assert err.code == "invalid_json" and err.message == f"The body nests deeper than {MAX_JSON_DEPTH} levels"
    assert err.param == ".".join(["a"] * MAX_JSON_DEPTH)
    lists = b'{"a": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"1" + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    assert parse_json(lists)
    lists = b'{"a": ' + b"[" * MAX_JSON_DEPTH + b"1" + b"]" * MAX_JSON_DEPTH + b"}"
    err = refusal(lists)
    assert err.param == "a" + "[0]" * (MAX_JSON_DEPTH - 1)


def test_a_body_deeper_than_the_interpreter_can_parse_is_refused_as_too_deep():
    err = refusal(b"[" * 5_000 + b"]" * 5_000)
    assert err.message == f"The body nests deeper than {MAX_JSON_DEPTH} levels" and err.code == "invalid_json"


def test_an_unpaired_surrogate_is_named_by_its_path_in_keys_and_values():
    err = refusal(b'{"messages": [{"role": "user", "content": "a\\ud800"}]}')
    assert (err.param, err.code) == ("messages[0].content", "invalid_value")
    assert err.message == "messages[0].content: contains an unpaired UTF-16 surrogate"
    err = refusal(b'{"dfast": {"\\udfff": 1}}')
    assert err.param == "dfast.\udfff"
    # a paired surrogate is a real character
    assert parse_json(b'{"p": "\\ud83d\\ude00 ok"}') == {"p": "\U0001F600 ok"}


def test_siblings_after_a_nested_container_are_still_checked():
    err = refusal(b'{"a": {"b": [1, 2]}, "c": [{"d": 1}], "e": "\\ud800"}')
    assert err.param == "e"
    err = refusal(b'{"a": [[1], [2, {"x": "\\udc00"}]]}')
    assert err.param == "a[1][1].x"


def test_the_item_limit_is_exact_and_named():
    raw = json.dumps({"x": list(range(9))}).encode()  # x, the list and 9 values: 1 key + 9 commas/brackets
    parse_json(raw, 11)
    err = refusal(raw, 10)
    assert err.code == "invalid_json" and err.param is None
    assert err.message == "The body has more than 10 JSON items (keys, values, array elements)"


def test_commas_inside_strings_are_not_items_and_the_exact_count_decides():
    raw = json.dumps({"x": ["a,b"] * 2000}).encode()  # 4002 items; the quick upper bound says 6002
    assert len(parse_json(raw, 4002)["x"]) == 2000
    assert refusal(raw, 4001).message == "The body has more than 4001 JSON items (keys, values, array elements)"
    assert refusal(raw, 1000).message.startswith("The body has more than 1000 JSON items")
    assert refusal(raw, 3).message.startswith("The body has more than 3 JSON items")


def test_validate_names_the_field_with_its_prefix():
    with pytest.raises(APIError) as info:
        validate(DiffusionOptions, {"steps": 0}, "dfast")
    assert (info.value.param, info.value.status) == ("dfast.steps", 400)
    with pytest.raises(APIError) as info:
        validate(CompletionRequest, {"model": "m", "prompt": "p", "max_tokens": "5"})
    assert info.value.param == "max_tokens"
    assert validate(CompletionRequest, {"model": "m", "prompt": "p", "max_tokens": 5}).max_tokens == 5


def test_dfast_options_are_strict_too():
    """DiffusionOptions itself is lax (configs may say "8"); a request's dfast is not."""
    for field, value in (("steps", "5"), ("ultra_fast", "yes"), ("threshold", "0.5")):
        with pytest.raises(APIError) as info:
            validate(DiffusionOptions, {field: value}, "dfast")
        assert (info.value.status, info.value.param) == (400, f"dfast.{field}")
