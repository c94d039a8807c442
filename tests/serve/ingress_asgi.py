"""Drive the ingress's Starlette app in-process through raw ASGI messages (no Ray), with the fake
replica clients of ``tests/api/fakes.py`` behind ``OpenAIServing``.

Raw ASGI lets a test play a client that trickles its body, stalls, or disconnects mid-body, in
milliseconds; the same behaviours through Ray's HTTP proxy are in ``tests/serve/test_limits.py``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.applications import Starlette

from dfast_serve.serve.ingress import Ingress
from tests.api.fakes import HANG, make

JSON = {"content-type": "application/json"}
DISCONNECT = object()  # in a body script: the client goes away
# The class as written: Serve's decorators wrap it in a replica class (its first base).
IngressClass = Ingress.func_or_class.__mro__[1]


def ingress_app(script: list[Any] | None = None, **config: Any) -> tuple[Starlette, Any]:
    serving, clients = make(script, **config)
    ingress = object.__new__(IngressClass)
    ingress.config, ingress.serving = serving.config, serving
    return IngressClass.__serve_build_asgi_app__(ingress), clients


async def call(app: Starlette, path: str, body: list[Any], method: str = "POST",
               headers: dict[str, str] = JSON, host: str = "127.0.0.2:9") -> tuple[int, dict[str, str], bytes]:
    """Send ``body`` (bytes parts, ``HANG`` or ``DISCONNECT``) as one request; the response. ``host``: the
    Host header (by default an unusual loopback name, so a redirect built from it would show)."""
    parts = list(body)

    async def receive() -> dict[str, Any]:
        if not parts:
            await asyncio.Event().wait()  # the request is complete: nothing more until the server ends
        part = parts.pop(0)
        if part is HANG:
            await asyncio.Event().wait()
        if part is DISCONNECT:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in {**headers, "host": host}.items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    raised: Exception | None = None
    try:
        await app(scope, receive, send)
    except Exception as exc:  # noqa: BLE001 - Starlette re-raises after its error handler answered a 500
        raised = exc
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if raised is not None and (start is None or start["status"] < 500):
        raise raised  # an exception with no answer, or after a successful response began: a real failure
    headers_out = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers_out, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def run(app: Starlette, path: str, body: list[Any], **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    return asyncio.run(asyncio.wait_for(call(app, path, body, **kwargs), 60))  # a deadline against a hang


def error(status: int, headers: dict[str, str], raw: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, (status, raw)
    assert headers["content-type"] == "application/json"
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def sse_events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            data = block.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
