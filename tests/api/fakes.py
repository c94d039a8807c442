"""A fake replica client and helpers for the Ray-free tests of the OpenAI serving logic.

The replica client here is a FAKE, standing in for one layer: it plays back scripted chunk deltas
and ``APIError``s the way ``serve/replica_client.py`` delivers them, so that every error the
serving class produces, and every relay, is checked in-process. What only Ray can show is proven by
the real-Ray tests in ``tests/serve``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from dfast_serve.api.serving import EventStream, OpenAIServing
from dfast_serve.config import ServerConfig
from dfast_serve.serve.metrics import ServingMetrics
from dfast_serve.wire import APIError, ReplicaRequest, StreamingChunk

DIFFUSION, AR = "tiny-mdlm", "smollm2-135m"
HANG = object()  # in a script: the replica never sends the next item


def chunk(text: str, nfe: int, final: bool = False, total: int = 0, first: bool = False) -> StreamingChunk:
    return StreamingChunk(text, len(text.split()), total, 8, 1.0 if final else 0.5, 1.0, first, final, nfe,
                        "length" if final else None, prompt_tokens=3)


STORY = [chunk("In the ", 1, first=True, total=2), chunk("beginning", 2, total=3),
         chunk(" was", 3, final=True, total=4)]


class FakeCall:
    """Plays a script: StreamingChunk items are yielded, exceptions raised, HANG waits forever."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.cancelled = False

    def __aiter__(self) -> "FakeCall":
        return self

    async def __anext__(self) -> StreamingChunk:
        if not self.script:
            raise StopAsyncIteration
        item = self.script.pop(0)
        if item is HANG:
            await asyncio.Event().wait()
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


class FakeClient:
    def __init__(self, script: list[Any] | None = None, ready: str = "ok") -> None:
        self.script = STORY if script is None else script
        self.ready = ready
        self.requests: list[ReplicaRequest] = []
        self.calls: list[FakeCall] = []

    def generate(self, request: ReplicaRequest) -> FakeCall:
        self.requests.append(request)
        self.calls.append(FakeCall(self.script))
        return self.calls[-1]

    async def check_ready(self, timeout_s: float) -> str:
        return self.ready

    # A toy tokenizer: one id per character.
    async def model_card(self, timeout_s: float) -> dict[str, Any]:
        return {"root": "/models/fake", "max_model_len": 1024}

    async def tokenize(self, prompt: str | None, messages: list[dict[str, str]] | None, add_special_tokens: bool,
                       add_generation_prompt: bool, timeout_s: float) -> list[int]:
        text = prompt if prompt is not None else "".join(m["content"] for m in messages or [])
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]

    async def detokenize(self, tokens: list[int], timeout_s: float) -> tuple[str, list[str]]:
        return "".join(chr(t) for t in tokens), [chr(t) for t in tokens]


def make(diffusion_script: list[Any] | None = None, ar_script: list[Any] | None = None,
         **config: Any) -> tuple[OpenAIServing, dict[str, FakeClient]]:
    settings = ServerConfig.model_validate({
        "models": [{"name": DIFFUSION, "engine": "diffusion", "diffusion": {"block_length": 16}},
                   {"name": AR, "engine": "ar"}],
        "retry_after_s": 7, **config})
    clients = {DIFFUSION: FakeClient(diffusion_script), AR: FakeClient(ar_script)}
    return OpenAIServing(settings, clients, settings.resolve_diffusion(environ={}), ServingMetrics()), clients


def body(**fields: Any) -> bytes:
    return json.dumps({"model": DIFFUSION, "prompt": "In the beginning", "max_tokens": 8, **fields}).encode()


def create(serving: OpenAIServing, raw: bytes, kind: str = "completion") -> dict | EventStream:
    return asyncio.run(serving.create(kind, raw, serving.metrics.request()))


def error_of(serving: OpenAIServing, raw: bytes, kind: str = "completion") -> APIError:
    with pytest.raises(APIError) as caught:
        create(serving, raw, kind)
    return caught.value


def events(stream: EventStream) -> list[Any]:
    async def read() -> list[bytes]:
        return [event async for event in stream.events]

    out = []
    for raw in asyncio.run(read()):
        assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
        data = raw[len(b"data: "):-2].decode()
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def errors(serving: OpenAIServing, code: str) -> float:
    """Requests ended by ``code``, whatever model they were routed to (none for a bad body)."""
    return sum(s.value for family in serving.metrics.registry.collect() for s in family.samples
               if s.name == "dfast:request_errors_total" and s.labels["code"] == code)
