"""The HTTP ingress deployment: routes, API key, body limits; the serving logic runs inside it.

Everything about OpenAI requests (planning, first-chunk wait, relays, errors, metrics) is
``api/serving.py:OpenAIServing``, which runs in this same process (no extra hop) and reaches the
model replicas through ``serve/replica_client.py``. Each request is tracked for ``/metrics`` from
the moment it arrives, before its body is read.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dfast_serve.api.auth import key_matches
from dfast_serve.api.errors import APIError
from dfast_serve.api.serving import EventStream, Kind, OpenAIServing
from dfast_serve.config import DiffusionOptions, ServerConfig
from dfast_serve.serve.metrics import ServingMetrics
from dfast_serve.serve.replica_client import RayReplicaClient


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """``replicas``: model name → its replica deployment; ``diffusion``: each diffusion model's
    resolved options (both from ``build_app``; nothing here reads the environment)."""

    def __init__(self, config: dict[str, Any], replicas: dict[str, DeploymentHandle],
                 diffusion: dict[str, DiffusionOptions]) -> None:
        self.config = ServerConfig.model_validate(config)
        clients = {name: RayReplicaClient(name, handle, self.config.retry_after_s) for name, handle in replicas.items()}
        self.serving = OpenAIServing(self.config, clients, diffusion, ServingMetrics())

    def __serve_build_asgi_app__(self) -> Starlette:
        routes = [
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/dfast/stream", self.native_stream, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]
        app = Starlette(routes=routes)
        app.add_exception_handler(404, _not_found)
        app.add_exception_handler(405, _method_not_allowed)
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
        except APIError as err:
            return _error_response(err)
        return JSONResponse(self.serving.list_models())

    async def health(self, request: Request) -> Response:
        ok, body = await self.serving.health()
        if ok:
            return JSONResponse(body)
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(self.config.retry_after_s)})

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.serving.metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    async def _generate(self, request: Request, kind: Kind) -> Response:
        tracker = self.serving.metrics.request()
        try:
            self._check_auth(request)
            result = await self.serving.create(kind, await self._read_body(request), tracker)
        except APIError as err:
            tracker.fail(err.code)
            return _error_response(err)
        if isinstance(result, EventStream):
            return _sse_response(result)
        return JSONResponse(result)

    async def _read_body(self, request: Request) -> bytes:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise APIError(415, "Content-Type must be application/json", code="unsupported_media_type")
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise _too_large(limit)
        return bytes(body)

    def _check_auth(self, request: Request) -> None:
        """``Authorization: Bearer <api_key>`` on every /v1 route when a key is configured."""
        key = self.config.api_key
        if key is None:
            return
        if not key_matches(request.headers.get("authorization"), key):
            raise APIError(401, "Missing or invalid API key (Authorization: Bearer <key>)", "authentication_error",
                           None, "invalid_api_key")


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The body exceeds {limit} bytes", code="request_too_large")


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


def _sse_response(stream: EventStream) -> StreamingResponse:
    """SSE; ``stream.close`` also runs as a background task, which Starlette runs even when the
    client left before the first byte (then the events never started and their cleanup never runs)."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream.events, media_type="text/event-stream", headers=headers,
                             background=BackgroundTask(stream.close))


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error_response(APIError(404, f"No route {request.url.path}", code="not_found"))


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return _error_response(APIError(405, f"{request.method} is not allowed on {request.url.path}",
                                    code="method_not_allowed"))
