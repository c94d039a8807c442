"""The HTTP ingress deployment: routes, API key, body limits; the serving logic runs inside it.

No client gets a plain-text error from here: anything a handler raises (a bug, ``MemoryError``)
becomes an OpenAI-shaped error, and a URL with a trailing slash is a 404, never a redirect (Starlette's
would build its ``Location`` from the client's ``Host`` header). ``/health`` is liveness: this
process answers, with no call to a model replica, so no load can fail it; each model replica's
own liveness (its step-loop thread) is Serve's health check (``ModelReplica.check_health``),
which restarts a replica that fails it. ``/ready`` is readiness: Serve's controller counts a running
replica of every model (no replica is called, so probes take no generation slot). ``/ready`` and
``/metrics`` need the API key when one is set, unless ``open_probes``.

Everything about OpenAI requests (planning, first-chunk wait, relays, errors, metrics) is
``api/serving.py:OpenAIServing``, which runs in this same process (no extra hop) and reaches the
model replicas through ``serve/replica_client.py``. Each request is tracked for ``/metrics`` from
the moment it arrives, before its body is read.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from importlib import resources
from typing import Any, AsyncIterator, Awaitable, Callable

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import dfast_serve
from dfast_serve.api import sse
from dfast_serve.api.auth import key_matches
from dfast_serve.api.errors import APIError, internal_error
from dfast_serve.api.host_check import HostCheck
from dfast_serve.api.serving import EventStream, Kind, OpenAIServing
from dfast_serve.config import DiffusionOptions, ServerConfig
from dfast_serve.serve.metrics import ServingMetrics
from dfast_serve.serve.replica_client import RayReplicaClient

logger = logging.getLogger("ray.serve")  # Serve's replica logs, which carry the request id
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # a client's x-request-id we adopt as the request id


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """``replicas``: model name → its replica deployment; ``diffusion``: each diffusion model's
    resolved options (both from ``build_app``; nothing here reads the environment)."""

    def __init__(self, config: dict[str, Any], replicas: dict[str, DeploymentHandle],
                 diffusion: dict[str, DiffusionOptions]) -> None:
        self.config = ServerConfig.model_validate(config)
        # Again here, where Serve is certainly running: an app built before Serve started (the import-time
        # ``default_app``) attached to proxies on 0.0.0.0 fails to start instead of serving without a key.
        self.config.check_exposure(proxy_host())
        clients = {name: RayReplicaClient(name, handle, self.config.retry_after_s) for name, handle in replicas.items()}
        self.serving = OpenAIServing(self.config, clients, diffusion, ServingMetrics())

    def __serve_build_asgi_app__(self) -> Starlette:
        routes = [
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/dfast/stream", self.native_stream, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.model_card, methods=["GET"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/", self.playground, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]
        app = Starlette(routes=routes, middleware=[Middleware(HostCheck, allowed=self.config.host_allowed)])
        app.router.redirect_slashes = False  # /v1/completions/ is a 404, not a redirect to the client's Host
        app.add_exception_handler(404, _not_found)
        app.add_exception_handler(405, _method_not_allowed)
        app.add_exception_handler(Exception, _unexpected)
        return app

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def native_stream(self, request: Request) -> Response:
        """Chunk records as SSE, for clients that want progress and forward-pass counts."""
        return await self._generate(request, "native")

    async def list_models(self, request: Request) -> Response:
        try:
            self._check_auth(request)
            return JSONResponse(await self.serving.list_models())
        except APIError as err:
            return _error_response(err)

    async def model_card(self, request: Request) -> Response:
        try:
            self._check_auth(request)
            model_id = request.path_params["model_id"]
            if not model_id:  # "/v1/models/" is no route (and never a redirect)
                raise APIError(404, f"No route {request.url.path}", code="not_found")
            return JSONResponse(await self.serving.model(model_id))
        except APIError as err:
            return _error_response(err)

    async def tokenize(self, request: Request) -> Response:
        """vLLM's /tokenize, answered by the model's replica (API key required when one is set)."""
        return await self._tokenizer_route(request, self.serving.tokenize)

    async def detokenize(self, request: Request) -> Response:
        return await self._tokenizer_route(request, self.serving.detokenize)

    async def _tokenizer_route(self, request: Request, call: Callable[[bytes], Awaitable[Any]]) -> Response:
        try:
            self._check_auth(request)
            return JSONResponse(await call(await self._read_body(request, time.monotonic())))
        except APIError as err:
            return _error_response(err)

    async def version(self, request: Request) -> Response:
        """Open, like /health: the package version, nothing about the models."""
        return JSONResponse({"version": dfast_serve.__version__})

    async def playground(self, request: Request) -> Response:
        """The playground page (open: it holds no data; its own requests carry the key the user types)."""
        return HTMLResponse(PLAYGROUND_HTML, headers={"Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        """Liveness: this process serves HTTP. Nothing remote, nothing queued."""
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """Readiness: every model has a running replica (``OpenAIServing.ready``; no replica is called).
        Behind the API key when one is set, unless ``open_probes``."""
        try:
            self._check_probe_auth(request)
        except APIError as err:
            return _error_response(err)
        ok, body = await self.serving.ready()
        if ok:
            return JSONResponse(body)
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(self.config.retry_after_s)})

    async def prometheus(self, request: Request) -> Response:
        """The metrics exposition; behind the API key when one is set, unless ``open_probes``."""
        try:
            self._check_probe_auth(request)
        except APIError as err:
            return _error_response(err)
        body, content_type = self.serving.metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    async def _generate(self, request: Request, kind: Kind) -> Response:
        tracker = self.serving.metrics.request()
        try:
            self._check_auth(request)
            body = await self._read_body(request, tracker.arrived)
            request_id = request_id_of(request)
            logger.info("%s %s: request %s", request.method, request.url.path, request_id)
            result = await self.serving.create(kind, body, tracker, request_id)
        except APIError as err:
            tracker.fail(err.code)
            return _error_response(err)
        except ClientDisconnect:  # nobody to answer; the response below goes nowhere
            tracker.abort()
            return Response(status_code=400)
        except MemoryError:
            tracker.fail("out_of_memory")
            return _error_response(_out_of_memory(self.config.retry_after_s))
        except Exception:  # noqa: BLE001 - a bug: logged, never shown to the client as a class name
            logger.exception("%s request failed", kind)
            tracker.fail("internal_error")
            return _error_response(internal_error())
        if isinstance(result, EventStream):
            return _sse_response(result)
        return JSONResponse(result)

    async def _read_body(self, request: Request, arrived: float) -> bytes:
        """The body, within ``max_body_bytes`` (413) and ``body_read_timeout_s`` from arrival (408)."""
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise APIError(415, "Content-Type must be application/json", code="unsupported_media_type")
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        body = bytearray()
        timeout_s = self.config.body_read_timeout_s
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + timeout_s - (time.monotonic() - arrived)):
                async for part in request.stream():
                    body += part
                    if len(body) > limit:
                        raise _too_large(limit)
        except TimeoutError:
            raise APIError(408, f"The request body was not received within {timeout_s:g} s (body_read_timeout_s)",
                           code="body_read_timeout") from None
        return bytes(body)

    def _check_probe_auth(self, request: Request) -> None:
        if not self.config.open_probes:
            self._check_auth(request)

    def _check_auth(self, request: Request) -> None:
        """``Authorization: Bearer <api_key>`` on every /v1 route when a key is configured."""
        digest = self.config.key_sha256
        if digest is None:
            return
        if not key_matches(request.headers.get("authorization"), digest):
            raise APIError(401, "Missing or invalid API key (Authorization: Bearer <key>)", "authentication_error",
                           None, "invalid_api_key")


def request_id_of(request: Request) -> str | None:
    """The client's ``x-request-id`` (Serve's proxy sets one when the client did not, and echoes it in
    the response), when it is short printable ASCII; None otherwise (then the request gets a uuid)."""
    value = request.headers.get("x-request-id")
    return value if value is not None and REQUEST_ID.fullmatch(value) else None


PLAYGROUND_HTML = resources.files("dfast_serve").joinpath("assets", "playground.html").read_text(encoding="utf-8")


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The body exceeds {limit} bytes", code="request_too_large")


def proxy_host() -> str | None:
    """The host Serve's HTTP proxies bind (``http_options.host``), or None when no Serve is running.

    ``build_app`` runs in a Ray task of the Serve controller (``serve run``/``serve deploy``) or in
    a driver; without Ray (``serve build``) it must not start a cluster just to ask.
    """
    import ray
    from ray.serve.context import _get_global_client

    if not ray.is_initialized():
        return None
    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else client.http_config.host


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


def _sse_response(stream: EventStream) -> StreamingResponse:
    """SSE; ``stream.close`` also runs as a background task, which Starlette runs even when the
    client left before the first byte (then the events never started and their cleanup never runs)."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_guarded(stream.events), media_type="text/event-stream", headers=headers,
                             background=BackgroundTask(stream.close))


async def _guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The events; a bug while producing them ends the stream with an error event and ``[DONE]``."""
    try:
        async for event in events:
            yield event
    except Exception:  # noqa: BLE001 - logged; the client gets the error shape, not a cut connection
        logger.exception("an event stream failed")
        yield sse.event(internal_error().body())
        yield sse.DONE


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error_response(APIError(404, f"No route {request.url.path}", code="not_found"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    """Whatever a handler let escape (a bug): the OpenAI shape, with no exception name in it."""
    return _error_response(_out_of_memory(None) if isinstance(exc, MemoryError) else internal_error())


def _out_of_memory(retry_after_s: int | None) -> APIError:
    return APIError(503, "The server ran out of memory for this request; retry shortly", "server_error", None,
                    "out_of_memory", retry_after_s)


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return _error_response(APIError(405, f"{request.method} is not allowed on {request.url.path}",
                                    code="method_not_allowed"))
