"""From request bytes to a validated request model, refusing anything a strict JSON API should refuse.

Python's ``json`` module is lenient where a server must not be: it accepts ``NaN`` and
``Infinity`` (and ``1e999``, which becomes infinity), lone UTF-16 surrogates (``"\\ud800"``,
which no tokenizer can encode), repeated keys (the last one silently wins), and nests as deep
as the interpreter's recursion limit. Each of those is a 400 here, with ``param`` naming where
in the body it was found. Validation is pydantic's strict mode: ``"5"``, ``5.0`` or ``true`` is
not an integer, ``"yes"`` is not a boolean.

Memory and time stay proportional to the body (the router parses every request): the items of
the body are counted on the raw bytes before ``json.loads`` builds a Python object for each
(an empty ``{}`` costs 2 bytes of JSON and ~64 bytes of Python), and the tree is checked with a
stack as deep as the body, building the path of a value only for an error.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterator, TypeVar

from pydantic import BaseModel, ValidationError

from dfast_serve.api.errors import bad_request, from_validation_error, loc_to_param

MAX_JSON_DEPTH = 32  # the deepest legitimate body (chat content parts) nests 4 levels
MAX_JSON_ITEMS = 50_000  # ~7 per chat message: 1,024 messages of several content parts each fit
MAX_OBJECT_KEYS = 64  # the largest request object has ~20 fields; each unknown key costs an error object

Model = TypeVar("Model", bound=BaseModel)

# An item is a string (keys included), a comma or an opening bracket, after whatever bytes are none of
# those: for valid JSON, at least one per key and value but the first of each container. Matching
# 256 at a time keeps the Python loop short; possessive and atomic groups keep the regex linear.
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_ITEM = re.compile(rb'[^"\[{,]*+(?:' + _STRING + rb'|[\[{,])', re.DOTALL)
_ITEMS_PER_CHUNK = 256
_CHUNK = re.compile(rb'(?>[^"\[{,]*+(?:' + _STRING + rb'|[\[{,])){%d}' % _ITEMS_PER_CHUNK, re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")


class _RefusedObject(dict):
    """Stands in for an object that is refused once the tree check knows where it is."""

    def __init__(self, problem: str, key: str | None = None) -> None:
        super().__init__()
        self.problem = problem
        self.key = key  # the key the problem is about, if one


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_OBJECT_KEYS:
        return _RefusedObject(f"has more than {MAX_OBJECT_KEYS} keys")
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    repeated = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return _RefusedObject("appears more than once in its object", repeated)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:32]} is out of the range of a double")
    return value


def parse_json(raw: bytes, max_items: int = MAX_JSON_ITEMS) -> dict[str, Any]:
    """The body as a JSON object; 400 ``invalid_json`` / ``invalid_type`` otherwise."""
    _count_items(raw, max_items)
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, object_pairs_hook=_object, parse_constant=_refuse_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise bad_request("The body is not valid UTF-8", code="invalid_json") from None
    except RecursionError:
        raise bad_request(f"The body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json") from None
    except ValueError as exc:
        raise bad_request(f"The body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"The body must be a JSON object, not {type(body).__name__}", code="invalid_type")
    _check_tree(body)
    return body


def _count_items(raw: bytes, max_items: int) -> None:
    """Refuse a body of more than ``max_items`` items, in one pass over the bytes, before it is parsed.

    Counting stops where the bytes stop looking like JSON (an unterminated string): json.loads
    then names the real problem.
    """
    if raw.count(b",") + raw.count(b"[") + raw.count(b"{") + raw.count(b'"') // 2 <= max_items:
        return  # an upper bound, in a few fast scans: the common case
    count = 0
    pos = 0
    while (match := _CHUNK.match(raw, pos)) and count <= max_items:
        count += _ITEMS_PER_CHUNK
        pos = match.end()
    while count <= max_items and (match := _ITEM.match(raw, pos)):
        count += 1
        pos = match.end()
    if count > max_items:
        raise bad_request(f"The body has more than {max_items} JSON items (keys, values, array elements)",
                          code="invalid_json")


def _children(container: dict[str, Any] | list[Any]) -> Iterator[tuple[str | int, Any]]:
    return iter(container.items()) if isinstance(container, dict) else enumerate(container)


def _check_tree(body: dict[str, Any]) -> None:
    """Depth limit, object keys (unrepeated, not too many) and well-formed strings.

    Depth-first with one iterator per level: the stack is as deep as the body, never as wide.
    """
    path: list[str | int] = []  # path[i]: the key or index being visited at level i + 1
    _check_object(body, path)
    stack = [_children(body)]
    path.append("")
    while stack:
        for key, value in stack[-1]:
            path[-1] = key
            if isinstance(key, str):
                _check_string(key, path)
            if isinstance(value, str):
                _check_string(value, path)
            elif isinstance(value, (dict, list)):
                if len(stack) >= MAX_JSON_DEPTH:
                    raise bad_request(f"The body nests deeper than {MAX_JSON_DEPTH} levels", loc_to_param(path),
                                      "invalid_json")
                _check_object(value, path)
                stack.append(_children(value))
                path.append("")
                break
        else:
            stack.pop()
            path.pop()


def _check_object(value: dict[str, Any] | list[Any], path: list[str | int]) -> None:
    if isinstance(value, _RefusedObject):
        param = loc_to_param(path if value.key is None else (*path, value.key))
        raise bad_request(f"{param or 'The body'} {value.problem}", param, "invalid_json")


def _check_string(value: str, path: list[str | int]) -> None:
    if not value.isascii() and _SURROGATE.search(value):
        param = loc_to_param(path)
        raise bad_request(f"{param}: contains an unpaired UTF-16 surrogate", param, "invalid_value")


def validate(schema: type[Model], body: dict[str, Any], prefix: str = "") -> Model:
    """``schema`` from a parsed body in strict mode; the first problem becomes a 400 naming its field."""
    try:
        return schema.model_validate(body, strict=True)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix=prefix) from None

