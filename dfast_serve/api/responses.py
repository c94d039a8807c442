"""OpenAI response objects built from the replica's chunk deltas (``wire.StreamingChunk``).

Every chunk of a stream also carries ``"dfast": {"nfe", "progress"}`` so that clients and
benchmarks can read time to first token in forward passes; OpenAI clients ignore it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from dfast_serve.wire import StreamingChunk

Kind = Literal["completion", "chat"]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class ResponseBuilder:
    """Turns chunk deltas into OpenAI objects for one request."""

    kind: Kind
    model: str
    request_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    role_sent: bool = False

    @property
    def _chunk_object(self) -> str:
        return "text_completion" if self.kind == "completion" else "chat.completion.chunk"

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def stream_chunk(self, chunk: StreamingChunk) -> dict[str, Any] | None:
        """One SSE payload for a chunk, or None when it carries nothing to say."""
        text, finish = chunk.new_text, chunk.finish_reason
        if not text and finish is None:
            return None
        if self.kind == "completion":
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        else:
            delta: dict[str, Any] = {"content": text}
            if not self.role_sent:
                delta = {"role": "assistant", "content": text}
                self.role_sent = True
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        payload = self._envelope(self._chunk_object, [choice])
        payload["dfast"] = {"nfe": chunk.nfe, "progress": chunk.progress}
        return payload

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        payload = self._envelope(self._chunk_object, [])
        payload["usage"] = usage(prompt_tokens, completion_tokens)
        return payload

    def full_response(self, text: str, finish: str | None, prompt_tokens: int, completion_tokens: int,
                      nfe: int) -> dict[str, Any]:
        if self.kind == "completion":
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
            obj = "chat.completion"
        payload = self._envelope(obj, [choice])
        payload["usage"] = usage(prompt_tokens, completion_tokens)
        payload["dfast"] = {"nfe": nfe}
        return payload
