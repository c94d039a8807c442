"""The HTTP ingress: validate, pick a model, relay the replica's chunk stream as it arrives.

Request path: Starlette route → ``_serve``: API key, body (``api.body``: strict JSON and a
strict pydantic request, 4xx on anything wrong) → ``choose_model`` → ``_open_stream`` (replica
generator through a streaming DeploymentHandle; the first item is awaited before any byte is
sent, so refusals, overload and queue timeouts become proper HTTP errors) → SSE relay or a
collected JSON response. No buffering: each chunk is written when it arrives. Every request is
timed for ``/metrics`` (``serve.metrics``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, AsyncIterator

from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dfast_serve.api import sse
from dfast_serve.api.auth import key_matches
from dfast_serve.api.body import parse_json, validate
from dfast_serve.api.errors import APIError, bad_request
from dfast_serve.api.protocol import ChatCompletionRequest, CompletionRequest
from dfast_serve.api.responses import ResponseBuilder
from dfast_serve.config import DiffusionOptions, ServerConfig, deep_merge
from dfast_serve.serve.metrics import RequestMetrics, RouterMetrics
from dfast_serve.serve.routing import ServedModel, choose_model

HEALTH_TIMEOUT_S = 5.0


class ReplicaStream:
    """A replica's chunk stream, its first chunk already in hand, ended by the request deadline.

    ``chunks`` turns every way a stream can go wrong into an ``APIError`` and, however it ends
    (done, failed, timed out, or abandoned by a client that left), cancels the replica's
    generator: the replica then stops its engine before the next forward pass.
    """

    def __init__(self, first: dict[str, Any], rest: DeploymentResponseGenerator, tracker: RequestMetrics,
                 config: ServerConfig) -> None:
        self.first = first
        self.rest = rest
        self.tracker = tracker
        self.config = config
        self.deadline = tracker.arrived + config.request_timeout_s

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        try:
            yield self.first
            while True:
                try:
                    chunk = await asyncio.wait_for(self.rest.__anext__(), max(self.deadline - time.monotonic(), 0.0))
                except StopAsyncIteration:
                    self.tracker.finish()
                    return
                except asyncio.TimeoutError:
                    raise self._failed(_timeout(self.config.request_timeout_s)) from None
                except Exception as exc:  # noqa: BLE001 - the replica failed or died mid-stream
                    raise self._failed(APIError(503, f"Generation failed: {type(exc).__name__}", "server_error",
                                                None, "replica_failed", self.config.retry_after_s)) from None
                self.tracker.chunk(chunk)
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        """Stop the replica (a no-op after a normal end); a request nothing else ended was aborted."""
        _cancel(self.rest)
        self.tracker.abort()

    def _failed(self, err: APIError) -> APIError:
        self.tracker.fail(err.code)
        return err


@serve.deployment(name="Router")
@serve.ingress()
class Router:
    def __init__(self, config: dict[str, Any], replicas: dict[str, DeploymentHandle]) -> None:
        self.config = ServerConfig.model_validate(config)
        self.served = [ServedModel(m.name, m.engine) for m in self.config.models]
        self.handles = {name: handle.options(stream=True) for name, handle in replicas.items()}
        self.plain_handles = replicas
        self.diffusion_base = {m.name: self.config.diffusion_base(m) for m in self.config.models}
        self.created = int(time.time())
        self.metrics = RouterMetrics()

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

    # ---- endpoints ----------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self._serve(request, "completion")

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat")

    async def native_stream(self, request: Request) -> Response:
        """StreamingChunk records as SSE, for clients that want progress and forward-pass counts."""
        return await self._serve(request, "native")

    async def list_models(self, request: Request) -> Response:
        try:
            self._check_auth(request)
        except APIError as err:
            return _error_response(err)
        data = [{"id": m.name, "object": "model", "created": self.created, "owned_by": "dfast_serve",
                 "engine": m.engine} for m in self.served]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        """200 only when a replica of every served model answers a no-op call within HEALTH_TIMEOUT_S.

        The call goes through the same handle and admission queue as generation, so a replica
        that cannot take a request (dead, restarting, or with its queue full) counts as not ready.
        """
        probes = await asyncio.gather(*(self._probe(handle) for handle in self.plain_handles.values()))
        models = dict(zip(self.plain_handles, probes))
        if all(state == "ok" for state in models.values()):
            return JSONResponse({"status": "ok", "models": models})
        return JSONResponse({"status": "unavailable", "models": models}, status_code=503,
                            headers={"Retry-After": str(self.config.retry_after_s)})

    async def prometheus(self, request: Request) -> Response:
        """This router replica's metrics (dfast_serve/serve/metrics.py)."""
        body, content_type = self.metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    # ---- request path -------------------------------------------------------------------------
    async def _serve(self, request: Request, kind: str) -> Response:
        tracker = self.metrics.request()
        try:
            self._check_auth(request)
            body = parse_json(await self._read_body(request))
            if kind == "native":
                schema = ChatCompletionRequest if "messages" in body else CompletionRequest
            else:
                schema = ChatCompletionRequest if kind == "chat" else CompletionRequest
            parsed = validate(schema, body)
            request_id = _request_id({"completion": "cmpl", "chat": "chatcmpl"}.get(kind, "dfast"))
            model, payload = self._plan(parsed, request_id)
            tracker.routed(model.name)
            stream = await self._open_stream(model, payload, tracker)
        except APIError as err:
            tracker.fail(err.code)
            return _error_response(err)
        if kind == "native":
            return _sse_response(self._relay_native(stream, model.name), stream)
        builder = ResponseBuilder(kind, model.name, request_id)  # type: ignore[arg-type]
        if parsed.stream:
            return _sse_response(self._relay_openai(stream, builder, parsed.include_usage()), stream)
        try:
            return JSONResponse(await self._collect(stream, builder))
        except APIError as err:
            return _error_response(err)

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

    def _plan(self, parsed: CompletionRequest | ChatCompletionRequest, request_id: str) -> tuple[ServedModel, dict]:
        """Pick the model and build the replica payload; every check that needs no tokenizer is here."""
        max_tokens = parsed.requested_max_tokens() or self.config.default_max_tokens
        model = choose_model(parsed.model, max_tokens, self.served, self.config.auto_ar_below_tokens)
        diffusion = None
        if model.engine == "diffusion":
            merged = deep_merge(self.diffusion_base[model.name], parsed.dfast or {})
            diffusion = validate(DiffusionOptions, merged, prefix="dfast").model_dump()
        elif parsed.dfast:
            raise bad_request(f"dfast options apply to diffusion models; '{model.name}' is autoregressive", "dfast")
        payload = {
            "request_id": request_id,
            "params": parsed.sampling_params(max_tokens),
            "diffusion": diffusion,
            "prompt": getattr(parsed, "prompt", None),
            "messages": parsed.message_dicts() if isinstance(parsed, ChatCompletionRequest) else None,
        }
        return model, payload

    async def _open_stream(self, model: ServedModel, payload: dict, tracker: RequestMetrics) -> ReplicaStream:
        """Start generation and wait for its first chunk, so that every refusal is a proper HTTP error.

        The wait is bounded by ``queue_timeout_s`` (503, retry) and ``request_timeout_s`` (504),
        both counted from the request's arrival.
        """
        generator: DeploymentResponseGenerator = self.handles[model.name].generate.remote(payload)
        deadline = tracker.arrived + self.config.request_timeout_s
        first_by = min(deadline, tracker.arrived + self.config.queue_timeout_s)
        retry = self.config.retry_after_s
        try:
            first = await asyncio.wait_for(generator.__anext__(), max(first_by - time.monotonic(), 0.0))
        except BackPressureError:
            _cancel(generator)
            raise APIError(503, f"Model '{model.name}' is at capacity; retry shortly", "server_overloaded",
                           None, "overloaded", retry_after_s=retry) from None
        except asyncio.TimeoutError:
            _cancel(generator)
            if first_by < deadline:
                raise APIError(503, f"Model '{model.name}' did not start the request within "
                               f"{self.config.queue_timeout_s:g} s; retry shortly", "server_overloaded", None,
                               "queue_timeout", retry_after_s=retry) from None
            raise _timeout(self.config.request_timeout_s) from None
        except StopAsyncIteration:
            raise APIError(500, "The replica ended the stream without output", "server_error", None,
                           "internal_error") from None
        except RayTaskError as exc:  # the replica's own code raised: a bug, not unavailability
            _cancel(generator)
            raise APIError(500, f"The replica failed: {type(exc).__name__}", "server_error", None,
                           "internal_error") from None
        except Exception as exc:  # noqa: BLE001 - a replica that died or is unreachable
            _cancel(generator)
            raise APIError(503, f"Model '{model.name}' is unavailable ({type(exc).__name__}); retry shortly",
                           "server_error", None, "replica_unavailable", retry_after_s=retry) from None
        if "error" in first:
            raise APIError.from_body(first, status=first.get("status", 400))
        tracker.chunk(first)
        return ReplicaStream(first, generator, tracker, self.config)

    async def _probe(self, handle: DeploymentHandle) -> str:
        """"ok", or why no replica of this deployment answered."""
        response = handle.ready.remote()
        try:
            await asyncio.wait_for(response, HEALTH_TIMEOUT_S)
        except asyncio.TimeoutError:
            _cancel(response)
            return f"no replica answered within {HEALTH_TIMEOUT_S:g} s"
        except BackPressureError:
            return "overloaded"
        except Exception as exc:  # noqa: BLE001 - any failure to reach a replica means not ready
            return type(exc).__name__
        return "ok"

    async def _relay_openai(self, stream: ReplicaStream, builder: ResponseBuilder,
                            include_usage: bool) -> AsyncIterator[bytes]:
        last: dict[str, Any] | None = None
        try:
            async for chunk in stream.chunks():
                last = chunk
                payload = builder.stream_chunk(chunk)
                if payload is not None:
                    yield sse.event(payload)
        except APIError as err:
            yield sse.event(err.body())
            yield sse.DONE
            return
        if include_usage and last is not None:
            yield sse.event(builder.usage_chunk(last["prompt_tokens"], last["total_tokens"]))
        yield sse.DONE

    async def _relay_native(self, stream: ReplicaStream, model: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream.chunks():
                yield sse.event({"model": model, **chunk})
        except APIError as err:
            yield sse.event(err.body())
        yield sse.DONE

    async def _collect(self, stream: ReplicaStream, builder: ResponseBuilder) -> dict[str, Any]:
        text, last = [], stream.first
        async for chunk in stream.chunks():
            text.append(chunk["new_text"])
            last = chunk
        return builder.full_response("".join(text), last["finish_reason"], last["prompt_tokens"],
                                     last["total_tokens"], last["nfe"])


# ---- helpers ------------------------------------------------------------------------------------
def _request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _cancel(call: DeploymentResponse | DeploymentResponseGenerator) -> None:
    """Best-effort cancel of a handle call, which may have ended already in any way.

    Ray's ``cancel()`` re-raises the error of a call whose assignment to a replica failed (a
    ``BackPressureError``, say); every caller here has handled that error already.
    """
    try:
        call.cancel()
    except Exception:  # noqa: BLE001, S110 - see above
        pass


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The body exceeds {limit} bytes", code="request_too_large")


def _timeout(limit: float) -> APIError:
    return APIError(504, f"Generation exceeded the request timeout of {limit:g} s", "timeout_error", None, "timeout")


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


def _sse_response(events: AsyncIterator[bytes], stream: ReplicaStream) -> StreamingResponse:
    """SSE; ``stream.close`` also runs as a background task, which Starlette runs even when the
    client left before the first byte (then ``events`` never started and its cleanup never runs)."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers,
                             background=BackgroundTask(stream.close))


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error_response(APIError(404, f"No route {request.url.path}", code="not_found"))


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return _error_response(APIError(405, f"{request.method} is not allowed on {request.url.path}",
                                    code="method_not_allowed"))
