"""Client side of an OpenAI SSE stream: bytes → ``data:`` payloads → ``RequestRecord`` updates.

Handles completion chunks (``choices[0].text``), chat chunks (``choices[0].delta.content``; a
role-only delta has empty text and so never counts as the first token), the usage chunk
(``choices: []``), error events, ``[DONE]``, and dfast_serve's optional top-level
``"dfast": {"nfe", "progress"}`` object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from benchmarks.harness.metrics import ChunkEvent, RequestRecord

DONE = "[DONE]"


class SSEDecoder:
    """Incremental SSE framing: feed raw bytes in any split, get each complete event's data."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, raw: bytes) -> list[str]:
        """The data of every event completed by ``raw`` (multi-line data joined with newlines)."""
        self._buffer += raw
        out: list[str] = []
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                return out
            line = self._buffer[:cut].rstrip(b"\r").decode("utf-8")
            self._buffer = self._buffer[cut + 1 :]
            if not line:
                if self._data:
                    out.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
            # comments (":…") and other fields (event:, id:, retry:) are ignored

    def close(self) -> list[str]:
        """Flush an event left unterminated at the end of the body."""
        out = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        return out


@dataclass
class StreamEvent:
    """One decoded payload, reduced to what the metrics need."""

    text: str | None = None  # None: not a choice chunk (usage-only, error, [DONE])
    nfe: int | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    done: bool = False


def _choice_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or choice.get("message") or {}
    return delta.get("content") or ""


def parse_payload(payload: str) -> StreamEvent:
    """Interpret one ``data:`` payload (a JSON chunk or ``[DONE]``)."""
    if payload.strip() == DONE:
        return StreamEvent(done=True)
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError as exc:
        return StreamEvent(error=f"bad SSE payload: {exc}: {payload[:200]!r}")
    return parse_object(obj)


def parse_object(obj: dict[str, Any]) -> StreamEvent:
    """Interpret one decoded chunk or response object."""
    event = StreamEvent()
    if "error" in obj:
        err = obj["error"]
        event.error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    choices = obj.get("choices") or []
    if choices:
        event.text = _choice_text(choices[0])
        event.finish_reason = choices[0].get("finish_reason")
    usage = obj.get("usage")
    if usage:
        event.prompt_tokens = usage.get("prompt_tokens")
        event.completion_tokens = usage.get("completion_tokens")
    dfast = obj.get("dfast")
    if isinstance(dfast, dict) and isinstance(dfast.get("nfe"), int):
        event.nfe = dfast["nfe"]
    return event


def apply_event(record: RequestRecord, event: StreamEvent, now: float) -> None:
    """Fold one event received at ``now`` into ``record``."""
    if event.error is not None and record.error is None:
        record.error = event.error
    if event.text is not None:
        record.chunks.append(ChunkEvent(now, event.text, event.nfe))
    if event.nfe is not None:
        record.final_nfe = event.nfe if record.final_nfe is None else max(record.final_nfe, event.nfe)
    if event.completion_tokens is not None:
        record.output_tokens = event.completion_tokens
    if event.prompt_tokens is not None:
        record.prompt_tokens = event.prompt_tokens
    if event.done:
        record.end = now


def record_from_response(record: RequestRecord, body: dict[str, Any], now: float) -> None:
    """Fill ``record`` from a non-streaming response body received at ``now`` (TTFT = latency)."""
    event = parse_object(body)
    event.done = True
    if event.text is None and event.error is None:
        event.text = ""
    apply_event(record, event, now)
