"""Host header check: a keyless server on loopback answers loopback names only (``ServerConfig.host_allowed``).

A browser sends the page's own name as ``Host``: a page on ``attacker.example`` whose DNS answer is
switched to 127.0.0.1 (DNS rebinding) reaches a server on the visitor's loopback with
``Host: attacker.example``, and is refused here. Clients that are not browsers are unaffected.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from starlette.responses import JSONResponse

from dfast_serve.api.errors import APIError

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def host_name(header: str) -> str:
    """The name in a Host header, without the port (``[::1]:8000`` → ``::1``)."""
    header = header.strip()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: an HTTP request whose Host the predicate refuses gets 403 in the OpenAI error
    shape, before any route runs. A request without Host (HTTP/1.0; never a browser's) passes."""

    def __init__(self, app: ASGIApp, allowed: Callable[[str], bool]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            raw = next((value for name, value in scope.get("headers", ()) if name == b"host"), None)
            if raw is not None:
                host = host_name(raw.decode("latin-1"))
                if not self.allowed(host):
                    err = APIError(403, f"Host {host!r} is not allowed (args.allowed_hosts)", "permission_error",
                                   None, "host_not_allowed")
                    await JSONResponse(err.body(), status_code=403)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
