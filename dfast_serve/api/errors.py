"""Building the errors a client gets (the record itself, ``APIError``, is the wire layer's)."""

from __future__ import annotations

from typing import Iterable

from pydantic import ValidationError

from dfast_serve.wire.errors import APIError, bad_request

__all__ = ["APIError", "bad_request", "from_validation_error", "internal_error", "loc_to_param"]


def internal_error() -> APIError:
    """A failure of ours; the message names no exception (its details go to the log)."""
    return APIError(500, "The server failed while handling this request", "server_error", None, "internal_error")


def loc_to_param(loc: Iterable[str | int]) -> str | None:
    """('ultra_fast_config', 'min_steps') -> 'ultra_fast_config.min_steps'; list indices as [i]."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or None


def from_validation_error(exc: ValidationError, prefix: str = "") -> APIError:
    """The first pydantic error, with the field it concerns as ``param``."""
    first = exc.errors(include_url=False)[0]
    # Union members show up as extra loc parts ("str", "list[str]"); they say nothing to a client.
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool"})))
    param = loc_to_param(loc)
    if prefix:
        param = f"{prefix}.{param}" if param else prefix
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    if first["type"] == "missing":
        code = "missing_required_parameter"
    else:
        code = "invalid_value"
    return APIError(400, f"{param}: {message}" if param else message, "invalid_request_error", param, code)
