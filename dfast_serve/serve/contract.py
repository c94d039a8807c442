"""What crosses the DeploymentHandle between the ingress and a model replica, as typed records.

The ingress sends one ``ReplicaRequest``; the replica's ``generate`` yields ``ReplicaChunk``
deltas, or a single ``ReplicaError`` when it refuses the request (a prompt its tokenizer cannot
take, a context overflow). Chunks carry only what is new: the text so far is never resent, so a
stream costs O(answer) across processes, not O(answer²). This module imports nothing of Ray,
so the serving logic and its tests use the same records without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dfast_serve.api.errors import APIError
from dfast_serve.engine.options import DiffusionOptions
from dfast_serve.engine.types import SamplingParams

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class ReplicaRequest:
    """One generation as the replica receives it, validated and planned by the ingress.

    Exactly one of ``prompt`` / ``messages`` is set. ``diffusion`` is the model's resolved
    options with the request's ``dfast`` overrides applied (None for an AR model). ``arrived`` is
    the request's arrival at the ingress in Unix seconds, so later hops can be timed against it.
    """

    request_id: str
    params: SamplingParams
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    diffusion: DiffusionOptions | None = None
    arrived: float = 0.0

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a ReplicaRequest has exactly one of prompt or messages")


@dataclass(frozen=True, slots=True)
class ReplicaChunk:
    """One step's delta of a stream (the engine's StreamingChunk without its running text).

    ``total_tokens`` counts committed answer tokens, ``target_tokens`` is max_tokens,
    ``progress`` the share decided (1.0 when final), ``nfe`` the forward passes so far,
    ``time_ms`` the engine's time since it started the request.
    """

    new_text: str
    new_tokens: int
    total_tokens: int
    target_tokens: int
    progress: float
    time_ms: float
    is_first: bool
    is_final: bool
    nfe: int
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    draft: str | None = None  # only when the request asked for it (native stream)

    @classmethod
    def from_engine(cls, chunk: Any) -> "ReplicaChunk":
        """The delta fields of an engine chunk."""
        return cls(chunk.new_text, chunk.new_tokens, chunk.total_tokens, chunk.target_tokens, chunk.progress,
                   chunk.time_ms, chunk.is_first, chunk.is_final, chunk.nfe, chunk.finish_reason, chunk.prompt_tokens,
                   getattr(chunk, "draft", None))


@dataclass(frozen=True)
class ReplicaError:
    """A request the replica refused; the client gets it as the HTTP error it describes."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def to_api_error(self) -> APIError:
        return APIError(self.status, self.message, self.type, self.param, self.code)
