"""The OpenAI serving logic, without Ray: plan a request, wait for its first chunk, relay or collect.

``OpenAIServing`` receives a mapping of model name → ``ReplicaClient`` (after vLLM's
``OpenAIServingCompletion(engine_client)`` and Ray Serve LLM's injected engine): in production the
ingress deployment gives it Ray clients (``serve/replica_client.py``), in tests a fake. The ingress
keeps only HTTP: routes, auth, body limits. Here a request goes

    ``create``: parse + validate the body (4xx naming the field) → ``plan``: choose the model,
    apply the request's ``dfast`` overrides to the model's resolved diffusion options, build the
    ``ReplicaRequest`` → ``_open``: start the generation and wait for its first chunk, so every
    refusal and overload is a proper HTTP status → an SSE relay or a collected JSON response.

Every failure is an ``APIError``: raised before the first byte, an ``error`` event after it.
Deadlines run from the request's arrival: no first chunk within ``queue_timeout_s`` is 503
``queue_timeout``, anything past ``request_timeout_s`` is 504 ``timeout``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Literal, Mapping

from dfast_serve.api import sse
from dfast_serve.api.body import parse_json, validate
from dfast_serve.api.errors import APIError, bad_request
from dfast_serve.api.model_choice import ServedModel, choose_model
from dfast_serve.api.prompt_limit import check_prompt_chars
from dfast_serve.api.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from dfast_serve.api.replica_stream import ReplicaClient, ReplicaStream, timeout_error
from dfast_serve.api.responses import ResponseBuilder, usage
from dfast_serve.api.tracking import Metrics, RequestTracker
from dfast_serve.config import DiffusionOptions, ServerConfig, deep_merge
from dfast_serve.wire import ReplicaRequest, SamplingParams, StreamingChunk

Kind = Literal["completion", "chat", "native"]
HEALTH_TIMEOUT_S = 5.0
UTILITY_TIMEOUT_S = 30.0  # /tokenize, /detokenize and model cards: one quick call to a replica
ID_PREFIX = {"completion": "cmpl", "chat": "chatcmpl", "native": "dfast"}


@dataclass
class EventStream:
    """An SSE body; ``close`` must run when the response ends, however it ends."""

    events: AsyncIterator[bytes]
    close: Callable[[], None]


class OpenAIServing:
    """Completions, chat completions and the native stream over a set of replica clients.

    ``diffusion`` holds each diffusion model's resolved options (``ServerConfig.resolve_diffusion``,
    run once by the app builder); a request only layers its ``dfast`` overrides on them.
    """

    def __init__(self, config: ServerConfig, clients: Mapping[str, ReplicaClient],
                 diffusion: Mapping[str, DiffusionOptions], metrics: Metrics) -> None:
        self.config = config
        self.clients = dict(clients)
        self.served = [ServedModel(m.name, m.kind) for m in config.models]
        missing = {m.name for m in config.models} - set(self.clients)
        missing |= {m.name for m in config.models if m.engine == "diffusion"} - set(diffusion)
        if missing:
            raise ValueError(f"no replica client or no diffusion options for {sorted(missing)}")
        self.diffusion = {name: (options, options.model_dump()) for name, options in diffusion.items()}
        self.metrics = metrics
        self.created = int(time.time())
        self._cards: dict[str, dict[str, Any]] = {}

    # ---- generation ---------------------------------------------------------------------------
    async def create(self, kind: Kind, raw_body: bytes, tracker: RequestTracker,
                     request_id: str | None = None) -> dict[str, Any] | EventStream:
        """A JSON response (``stream: false``) or an SSE stream; ``APIError`` before any byte is sent.
        ``request_id`` (the client's ``x-request-id``) names the request, as in vLLM."""
        try:
            body = parse_json(raw_body)
            if kind == "native":
                schema = ChatCompletionRequest if "messages" in body else CompletionRequest
            else:
                schema = ChatCompletionRequest if kind == "chat" else CompletionRequest
            parsed = validate(schema, body)
            if parsed.draft and kind != "native":
                raise bad_request("draft is only offered on /v1/dfast/stream", "draft")
            request_id = f"{ID_PREFIX[kind]}-{request_id or uuid.uuid4().hex}"
            model, request = self.plan(parsed, request_id, tracker.arrived)
            tracker.routed(model.name)
            stream = await self._open(model, request, tracker)
        except APIError as err:
            tracker.fail(err.code)
            raise
        except asyncio.CancelledError:  # the client left while waiting: the gauges must not keep it
            tracker.abort()
            raise
        if kind == "native":
            return EventStream(self._relay_native(stream, model.name), stream.close)
        builder = ResponseBuilder(kind, model.name, request_id)
        if parsed.stream:
            return EventStream(self._relay_openai(stream, builder, parsed.include_usage(), parsed.continuous_usage()),
                               stream.close)
        return await self._collect(stream, builder)

    def plan(self, parsed: CompletionRequest | ChatCompletionRequest, request_id: str,
             arrived: float) -> tuple[ServedModel, ReplicaRequest]:
        """The model and the replica's request; every check that needs no tokenizer is here."""
        max_tokens = parsed.requested_max_tokens() or self.config.default_max_tokens
        if parsed.min_tokens > max_tokens:
            raise bad_request(f"min_tokens ({parsed.min_tokens}) must not exceed max_tokens ({max_tokens})",
                              "min_tokens")
        model = choose_model(parsed.model, max_tokens, self.served, self.config.auto_ar_below_tokens)
        diffusion = None
        if model.engine == "diffusion":
            base, base_dump = self.diffusion[model.name]
            diffusion = validate(DiffusionOptions, deep_merge(base_dump, parsed.dfast), "dfast") if parsed.dfast else base
        elif parsed.dfast:
            raise bad_request(f"dfast options apply to diffusion models; '{model.name}' is autoregressive", "dfast")
        chat = isinstance(parsed, ChatCompletionRequest)
        check_prompt_chars(parsed, self.config.max_prompt_chars)
        request = ReplicaRequest(
            request_id=request_id,
            params=SamplingParams(**parsed.sampling_params(max_tokens)),
            prompt=None if chat else parsed.prompt,
            messages=parsed.message_dicts() if chat else None,
            diffusion=diffusion,
            arrived=time.time() - (time.monotonic() - arrived),
        )
        return model, request

    async def _open(self, model: ServedModel, request: ReplicaRequest, tracker: RequestTracker) -> ReplicaStream:
        """Start the generation and wait for its first chunk (bounded by both timeouts, from arrival)."""
        call = self.clients[model.name].generate(request)
        deadline = tracker.arrived + self.config.request_timeout_s
        first_by = min(deadline, tracker.arrived + self.config.queue_timeout_s)
        try:
            first = await asyncio.wait_for(call.__anext__(), max(first_by - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            call.cancel()
            if first_by < deadline:
                raise APIError(503, f"Model '{model.name}' did not start the request within "
                               f"{self.config.queue_timeout_s:g} s; retry shortly", "server_overloaded", None,
                               "queue_timeout", retry_after_s=self.config.retry_after_s) from None
            raise timeout_error(self.config.request_timeout_s) from None
        except StopAsyncIteration:
            raise APIError(500, "The replica ended the stream without output", "server_error", None,
                           "internal_error") from None
        except BaseException:  # an APIError, or the client left while the request waited (CancelledError)
            call.cancel()
            raise
        tracker.chunk(first)
        return ReplicaStream(first, call, tracker, self.config.request_timeout_s)

    async def _relay_openai(self, stream: ReplicaStream, builder: ResponseBuilder, include_usage: bool,
                            continuous_usage: bool = False) -> AsyncIterator[bytes]:
        last: StreamingChunk | None = None
        try:
            async for chunk in stream:
                last = chunk
                payload = builder.stream_chunk(chunk)
                if payload is not None:
                    if continuous_usage:
                        payload["usage"] = usage(chunk.prompt_tokens, chunk.total_tokens)
                    yield sse.event(payload)
        except APIError as err:
            yield sse.event(err.body())
            yield sse.DONE
            return
        if include_usage and last is not None:
            yield sse.event(builder.usage_chunk(last.prompt_tokens, last.total_tokens))
        yield sse.DONE

    async def _relay_native(self, stream: ReplicaStream, model: str) -> AsyncIterator[bytes]:
        """The chunk records as SSE, with ``full_text`` rebuilt here from the deltas: in every event until
        ``native_full_text_chars`` characters have been repeated (then null), and always in the final one."""
        text, repeated = "", 0
        try:
            async for chunk in stream:
                text += chunk.new_text
                shown: str | None = text
                if not chunk.is_final:
                    repeated += len(text)
                    shown = text if repeated <= self.config.native_full_text_chars else None
                yield sse.event(native_event(chunk, shown, model))
        except APIError as err:
            yield sse.event(err.body())
        yield sse.DONE

    async def _collect(self, stream: ReplicaStream, builder: ResponseBuilder) -> dict[str, Any]:
        text, last = [], stream.first
        async for chunk in stream:
            text.append(chunk.new_text)
            last = chunk
        return builder.full_response("".join(text), last.finish_reason, last.prompt_tokens, last.total_tokens,
                                     last.nfe)

    # ---- models, tokens and health -------------------------------------------------------------
    async def list_models(self) -> dict[str, Any]:
        """vLLM's model cards (``root``, ``max_model_len``; vLLM's tools read them) plus our ``engine``."""
        cards = await asyncio.gather(*(self._card(m) for m in self.served))
        return {"object": "list", "data": list(cards)}

    async def model(self, name: str) -> dict[str, Any]:
        """``GET /v1/models/{id}``: one card, or 404 ``model_not_found``."""
        served = next((m for m in self.served if m.name == name), None)
        if served is None:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return await self._card(served)

    async def _card(self, model: ServedModel) -> dict[str, Any]:
        """A replica's facts are asked once and kept; a replica that cannot answer yet leaves them null."""
        if model.name not in self._cards:
            try:
                self._cards[model.name] = await self.clients[model.name].model_card(UTILITY_TIMEOUT_S)
            except (APIError, asyncio.TimeoutError):
                return self._card_of(model, {"root": None, "max_model_len": None})
        return self._card_of(model, self._cards[model.name])

    def _card_of(self, model: ServedModel, facts: dict[str, Any]) -> dict[str, Any]:
        return {"id": model.name, "object": "model", "created": self.created, "owned_by": "dfast_serve",
                "root": facts["root"], "parent": None, "max_model_len": facts["max_model_len"], "permission": [],
                "engine": model.engine}

    def _named_model(self, name: str | None) -> ServedModel:
        """The model a /tokenize or /detokenize body names (the first served one when it names none)."""
        if name is None:
            return self.served[0]
        served = next((m for m in self.served if m.name == name), None)
        if served is None:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return served

    async def tokenize(self, raw_body: bytes) -> dict[str, Any]:
        """vLLM's ``POST /tokenize``: ``{count, max_model_len, tokens, token_strs}``, on the model's replica."""
        parsed = validate(TokenizeRequest, parse_json(raw_body))
        check_prompt_chars(parsed, self.config.max_prompt_chars)  # the same bound as generation: before any tokenizer
        model = self._named_model(parsed.model)
        client = self.clients[model.name]
        tokens = await client.tokenize(parsed.prompt, parsed.message_dicts(), parsed.add_special_tokens,
                                       parsed.add_generation_prompt, UTILITY_TIMEOUT_S)
        token_strs = (await client.detokenize(tokens, UTILITY_TIMEOUT_S))[1] if parsed.return_token_strs else None
        card = await self._card(model)
        return {"count": len(tokens), "max_model_len": card["max_model_len"], "tokens": tokens,
                "token_strs": token_strs}

    async def detokenize(self, raw_body: bytes) -> dict[str, Any]:
        """vLLM's ``POST /detokenize``: ``{prompt}``."""
        parsed = validate(DetokenizeRequest, parse_json(raw_body))
        model = self._named_model(parsed.model)
        text, _ = await self.clients[model.name].detokenize(parsed.tokens, UTILITY_TIMEOUT_S)
        return {"prompt": text}

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready only when every served model has a running replica (asked within ``HEALTH_TIMEOUT_S``)."""
        probes = await asyncio.gather(*(client.check_ready(HEALTH_TIMEOUT_S) for client in self.clients.values()))
        models = dict(zip(self.clients, probes))
        ok = all(state == "ok" for state in models.values())
        return ok, {"status": "ok" if ok else "unavailable", "models": models}


def native_event(chunk: StreamingChunk, full_text: str | None, model: str) -> dict[str, Any]:
    """One ``/v1/dfast/stream`` event: the chunk's fields, the text so far (None past the stream's
    ``native_full_text_chars``) and the model (and the ``draft`` of the undecided tail, when the request asked
    for one)."""
    event = {"model": model, "new_text": chunk.new_text, "full_text": full_text, "new_tokens": chunk.new_tokens,
            "total_tokens": chunk.total_tokens, "target_tokens": chunk.target_tokens, "progress": chunk.progress,
            "time_ms": chunk.time_ms, "is_first": chunk.is_first, "is_final": chunk.is_final, "nfe": chunk.nfe,
            "finish_reason": chunk.finish_reason, "prompt_tokens": chunk.prompt_tokens}
    if chunk.draft is not None:
        event["draft"] = chunk.draft
    return event
