"""From request bytes to a validated request model, refusing anything a strict JSON API should refuse.

Python's ``json`` module is lenient where a server must not be: it accepts ``NaN`` and
``Infinity``, lone UTF-16 surrogates (``"\\ud800"``, which no tokenizer can encode), and nests
as deep as the interpreter's recursion limit. Each of those is a 400 here, with ``param``
naming where in the body it was found. Validation is pydantic's strict mode: ``"5"``,
``5.0`` or ``true`` is not an integer, ``"yes"`` is not a boolean.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dfast_serve.api.errors import bad_request, from_validation_error

MAX_JSON_DEPTH = 32  # the deepest legitimate body (chat content parts) nests 4 levels

Model = TypeVar("Model", bound=BaseModel)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 ``invalid_json`` / ``invalid_type`` otherwise."""
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_refuse_constant)
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


def _check_tree(body: dict[str, Any]) -> None:
    """Depth limit and well-formed strings, checked without recursion."""
    pending: list[tuple[Any, str, int]] = [(body, "", 1)]
    while pending:
        value, path, depth = pending.pop()
        if isinstance(value, str):
            _check_string(value, path)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise bad_request(f"The body nests deeper than {MAX_JSON_DEPTH} levels", path or None, "invalid_json")
        if isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else key
                _check_string(key, child)
                pending.append((item, child, depth + 1))
        else:
            pending.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))


def _check_string(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{path}: contains an unpaired UTF-16 surrogate", path or None, "invalid_value") from None


def validate(schema: type[Model], body: dict[str, Any], prefix: str = "") -> Model:
    """``schema`` from a parsed body in strict mode; the first problem becomes a 400 naming its field."""
    try:
        return schema.model_validate(body, strict=True)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix=prefix) from None
