"""What crosses the DeploymentHandle between the ingress and a model replica, as typed records.

The ingress sends one ``ReplicaRequest``; the replica's ``generate`` yields ``ReplicaChunk``
deltas, or a single ``ReplicaError`` when it refuses the request (a prompt its tokenizer cannot
take, a context overflow). Chunks carry only what is new: the text so far is never resent, so a
stream costs O(answer) across processes, not O(answer²). This module imports nothing of Ray,
so the serving logic and its tests use the same records without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from dfast_serve.api.errors import APIError
from dfast_serve.engine.options import DiffusionOptions
from dfast_serve.engine.types import SamplingParams, StreamingChunk


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


# One step's delta of a stream: the engine's own chunk record, which already carries only what is new
# (``total_tokens`` committed answer tokens, ``target_tokens`` max_tokens, ``progress`` the share decided,
# ``nfe`` the forward passes so far, ``time_ms`` since the engine started the request, ``draft`` only when
# asked for), so it crosses the handle as it is.
ReplicaChunk = StreamingChunk


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
