"""The one error record of every layer: what a client gets, ``{"error": {"message", "type", "param", "code"}}``.

A model family refuses a request by raising it (400 naming the field), the replica turns any other
failure of a request into it once, it crosses the handle as a stream item, and the ingress sends it
as the HTTP error or SSE error event it describes. Helpers that build particular errors live in
``api/errors.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class APIError(Exception):
    """An error bound for the client. ``param`` names the offending request field, if any."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # crosses processes (Ray pickles stream items): rebuild from the fields
        return APIError, (self.status, self.message, self.type, self.param, self.code, self.retry_after_s)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        headers = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return headers

    def to_json(self) -> str:
        return json.dumps(self.body())


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    """A request the server will not run, with the field at fault: 400."""
    return APIError(400, message, "invalid_request_error", param, code)
