"""The HTTP ingress: validate, pick a model, relay the replica's chunk stream as it arrives.

Request path: Starlette route → ``_parse`` (body → pydantic request → 4xx on anything wrong)
→ ``choose_model`` → ``_open_stream`` (replica generator through a streaming
DeploymentHandle; the first item is awaited before any byte is sent, so refusals become
proper HTTP errors) → SSE relay or a collected JSON response. No buffering: each chunk is
written when it arrives.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import Any, AsyncIterator

from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dfast_serve.api import sse
from dfast_serve.api.errors import APIError, bad_request, from_validation_error
from dfast_serve.api.protocol import ChatCompletionRequest, CompletionRequest
from dfast_serve.api.responses import ResponseBuilder
from dfast_serve.config import DiffusionOptions, ServerConfig, deep_merge
from dfast_serve.serve.routing import AUTO, ServedModel, choose_model

RETRY_AFTER_S = 1
HEALTH_TIMEOUT_S = 5.0


class ReplicaStream:
    """A replica's chunk stream with its first item already in hand."""

    def __init__(self, first: dict[str, Any], rest: DeploymentResponseGenerator) -> None:
        self.first = first
        self.rest = rest

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        yield self.first
        async for item in self.rest:
            yield item

    def cancel(self) -> None:
        self.rest.cancel()


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

    def __serve_build_asgi_app__(self) -> Starlette:
        routes = [
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/dfast/stream", self.native_stream, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ]
        app = Starlette(routes=routes)
        app.add_exception_handler(404, _not_found)
        app.add_exception_handler(405, _method_not_allowed)
        return app

    # ---- endpoints ----------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self._serve(request, CompletionRequest, "completion")

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, ChatCompletionRequest, "chat")

    async def native_stream(self, request: Request) -> Response:
        """StreamingChunk records as SSE, for clients that want progress and forward-pass counts."""
        try:
            body = await self._read_json(request)
            schema = ChatCompletionRequest if isinstance(body, dict) and "messages" in body else CompletionRequest
            parsed = _validate(schema, body)
            model, payload = self._plan(parsed, request_id=_request_id("dfast"))
            stream = await self._open_stream(model, payload)
        except APIError as err:
            return _error_response(err)
        return _sse_response(self._relay_native(stream, model.name))

    async def list_models(self, request: Request) -> Response:
        data = [{"id": m.name, "object": "model", "created": self.created, "owned_by": "dfast_serve",
                 "engine": m.engine} for m in self.served]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        """200 only when a replica of every served model answers."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(h.ready.remote() for h in self.plain_handles.values())), HEALTH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure to reach a replica means unhealthy
            return JSONResponse({"status": "unavailable", "detail": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "models": [m.name for m in self.served]})

    # ---- request path -------------------------------------------------------------------------
    async def _serve(self, request: Request, schema: type, kind: str) -> Response:
        request_id = _request_id("cmpl" if kind == "completion" else "chatcmpl")
        try:
            parsed = _validate(schema, await self._read_json(request))
            model, payload = self._plan(parsed, request_id)
            stream = await self._open_stream(model, payload)
        except APIError as err:
            return _error_response(err)
        builder = ResponseBuilder(kind, model.name, request_id)  # type: ignore[arg-type]
        if parsed.stream:
            return _sse_response(self._relay_openai(stream, builder, parsed.include_usage()))
        try:
            return JSONResponse(await self._collect(stream, builder))
        except APIError as err:
            return _error_response(err)

    async def _read_json(self, request: Request) -> Any:
        self._check_auth(request)
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise APIError(415, "Content-Type must be application/json", code="unsupported_media_type")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.config.max_body_bytes:
            raise _too_large(self.config.max_body_bytes)
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > self.config.max_body_bytes:
                raise _too_large(self.config.max_body_bytes)
        try:
            return json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise bad_request(f"The body is not valid JSON: {type(exc).__name__}", code="invalid_json") from None

    def _check_auth(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise APIError(401, "Missing or invalid API key (Authorization: Bearer <key>)", "authentication_error",
                           None, "invalid_api_key")

    def _plan(self, parsed: CompletionRequest | ChatCompletionRequest, request_id: str) -> tuple[ServedModel, dict]:
        """Pick the model and build the replica payload; every check that needs no tokenizer is here."""
        max_tokens = parsed.requested_max_tokens() or self.config.default_max_tokens
        model = choose_model(parsed.model, max_tokens, self.served, self.config.auto_ar_below_tokens)
        diffusion = None
        if model.engine == "diffusion":
            try:
                options = DiffusionOptions.model_validate(deep_merge(self.diffusion_base[model.name], parsed.dfast or {}))
            except ValidationError as exc:
                raise from_validation_error(exc, prefix="dfast") from None
            diffusion = options.model_dump()
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

    async def _open_stream(self, model: ServedModel, payload: dict) -> ReplicaStream:
        """Start generation; refusals (bad prompt, overload, no replica) become APIErrors here."""
        generator: DeploymentResponseGenerator = self.handles[model.name].generate.remote(payload)
        try:
            first = await asyncio.wait_for(generator.__anext__(), self.config.request_timeout_s)
        except BackPressureError:
            generator.cancel()
            raise APIError(503, f"Model '{model.name}' is at capacity; retry shortly", "server_overloaded",
                           None, "overloaded", retry_after_s=RETRY_AFTER_S) from None
        except asyncio.TimeoutError:
            generator.cancel()
            raise _timeout(self.config.request_timeout_s) from None
        except StopAsyncIteration:
            raise APIError(500, "The replica ended the stream without output", "server_error") from None
        except Exception as exc:  # noqa: BLE001 - a replica that died or is unreachable
            generator.cancel()
            raise APIError(503, f"Model '{model.name}' is unavailable ({type(exc).__name__}); retry shortly",
                           "server_error", None, "replica_unavailable", retry_after_s=RETRY_AFTER_S) from None
        if "error" in first:
            raise APIError.from_body(first, status=first.get("status", 400))
        return ReplicaStream(first, generator)

    async def _chunks(self, stream: ReplicaStream) -> AsyncIterator[dict[str, Any]]:
        """The replica's chunks, ended by the request timeout; errors surface as APIError."""
        deadline = time.monotonic() + self.config.request_timeout_s
        iterator = stream.__aiter__()
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    chunk = await asyncio.wait_for(iterator.__anext__(), max(remaining, 0.0))
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise _timeout(self.config.request_timeout_s) from None
                except Exception as exc:  # noqa: BLE001 - the replica failed mid-stream
                    raise APIError(503, f"Generation failed: {type(exc).__name__}", "server_error", None,
                                   "replica_failed") from None
                yield chunk
        finally:
            stream.cancel()  # no-op after a normal end; stops the replica on disconnect or timeout

    async def _relay_openai(self, stream: ReplicaStream, builder: ResponseBuilder,
                            include_usage: bool) -> AsyncIterator[bytes]:
        last: dict[str, Any] | None = None
        try:
            async for chunk in self._chunks(stream):
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
            async for chunk in self._chunks(stream):
                yield sse.event({"model": model, **chunk})
        except APIError as err:
            yield sse.event(err.body())
        yield sse.DONE

    async def _collect(self, stream: ReplicaStream, builder: ResponseBuilder) -> dict[str, Any]:
        text, last = [], None
        async for chunk in self._chunks(stream):
            text.append(chunk["new_text"])
            last = chunk
        assert last is not None  # the first item is always there
        return builder.full_response("".join(text), last["finish_reason"], last["prompt_tokens"],
                                     last["total_tokens"], last["nfe"])


# ---- helpers ------------------------------------------------------------------------------------
def _request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _validate(schema: type, body: Any) -> Any:
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object", code="invalid_type")
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The body exceeds {limit} bytes", code="request_too_large")


def _timeout(limit: float) -> APIError:
    return APIError(504, f"Generation exceeded the request timeout of {limit:g} s", "timeout_error", None, "timeout")


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


def _sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error_response(APIError(404, f"No route {request.url.path}", code="not_found"))


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return _error_response(APIError(405, f"{request.method} is not allowed on {request.url.path}",
                                    code="method_not_allowed"))
