"""Every error a client can get, in one shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from pydantic import ValidationError


@dataclass
class APIError(Exception):
    """An error bound for the client. ``param`` names the offending request field, if any."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        headers = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return headers

    def to_json(self) -> str:
        return json.dumps(self.body())

    @classmethod
    def from_body(cls, body: dict, status: int = 400) -> "APIError":
        """Rebuild an error that crossed a process boundary as its ``body()`` dict."""
        err = body["error"]
        return cls(status, err["message"], err.get("type", "invalid_request_error"), err.get("param"), err.get("code"))


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


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
